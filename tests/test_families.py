"""Every drafter kind on the newer families (issue 20): drafters trained briefly on tiny Gemma,
Phi-3 and mixture-of-experts checkpoints, exported with a draft model, decode exactly what
plain greedy decoding does (the families' parity with transformers: tests/test_models.py,
tests/test_runtime.py). Gemma-2/3 and the Mellum-shaped MoE carry a sliding window of 8 on some
layers, which the prompts plus 20 tokens run past, in chain and tree verification."""

import numpy as np
import pytest
from conftest import DRAFTER_KINDS, run_to_end, train_tiny_drafters

from edgespec.models.args import ModelArgs
from edgespec.runtime.generator import GenerationParams
from edgespec.runtime.model import Model


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gemma", "phi3", "phi3_longrope", "gemma2", "gemma3",
                                    "mixtral", "qwen2_moe", "mellum_moe", "gpt_oss"])
def test_every_drafter_kind_is_lossless_on_the_family(family, tiny_dirs, tiny_bundles,
                                                      tmp_path):
    from edgespec.export.pipeline import ExportOptions, export_bundle

    hf = tiny_dirs[family]
    trained = train_tiny_drafters(hf, tiny_bundles[family][1], tmp_path / "drafters", steps=10)
    export_bundle(hf, tmp_path / "b", ExportOptions(
        max_len=64, progress=False, draft_model=tiny_dirs["llama"],
        drafters=tuple((k, trained[k][1]) for k in DRAFTER_KINDS)))
    model = Model(tmp_path / "b")
    assert model.manifest.model.architecture == ModelArgs.from_hf_dir(hf).arch
    params = GenerationParams(max_new_tokens=20, stop_on_eos=False)
    rng = np.random.default_rng(2)
    for prompt in ([5, 9, 11, 5, 9, 11, 5], *(rng.integers(3, 300, 6).tolist()
                                              for _ in range(2))):
        plain = run_to_end(model, params, prompt).tokens
        for name in ("ngram", "draft_model", *DRAFTER_KINDS):
            for width in (1, 3) if name in ("draft_model", "eagle3") else (None,):
                got = run_to_end(model, params, prompt, model.drafter(name, tree_width=width))
                assert got.tokens == plain, (family, name, width)
