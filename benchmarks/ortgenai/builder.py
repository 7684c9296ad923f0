"""onnxruntime-genai's model builder (`python -m onnxruntime_genai.models.builder ARGS`), with one
compatibility fix: transformers 5 gives Gemma-3 a rope_parameters dict per layer type
({"full_attention": ..., "sliding_attention": ...}), while genai 0.18's builder reads one flat
dict plus `rope_local_base_freq` (transformers 4's form). The config is handed over in that
form; the weights and everything else are the builder's own."""

import runpy
import sys

import transformers

_from_pretrained = transformers.AutoConfig.from_pretrained


def _flat_rope(*args, **kwargs):
    config = _from_pretrained(*args, **kwargs)
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict) and "full_attention" in rope:
        config.rope_local_base_freq = rope["sliding_attention"]["rope_theta"]
        config.rope_parameters = dict(rope["full_attention"])
    return config


transformers.AutoConfig.from_pretrained = _flat_rope
sys.argv[0] = "onnxruntime_genai.models.builder"
runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__", alter_sys=True)
