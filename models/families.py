"""Model families: what sets each architecture apart, one entry per Hugging Face class.

ModelArgs.from_hf_config (models/args.py) turns an entry plus the checkpoint's config.json into
the flags that our torch model (models/llama.py) and both ONNX backends of export/decoder.py's
loop (export/target_graph.py PlainEmitter, export/fused_graph.py FusedEmitter) read. Adding a family whose differences they already read is an
entry here plus its parity test against transformers (tests/test_models.py); a new kind of
difference is a field here and the few lines in models/llama.py and the two backends that read
it.
"""

from __future__ import annotations

from dataclasses import dataclass


class UnsupportedModelError(ValueError):
    pass


@dataclass(frozen=True)
class Family:
    name: str  # what the manifest records as model.architecture
    qkv_bias: bool = False  # q/k/v projections always carry a bias (Qwen2)
    bias_flag: str | None = None  # the config key that puts a bias on q/k/v and o (Llama's
    # attention_bias); None: the family has no such switch
    qk_norm: bool = False  # RMSNorm over head_dim on q and k before RoPE (Qwen3)
    window_switch: str | None = None  # the config key that turns sliding_window on (Qwen's
    # use_sliding_window: their configs carry a window that is off); None: on when given
    activation: str = "silu"  # the MLP's gate: "silu" or "gelu_tanh" (models/llama.ACTIVATIONS)
    norm_offset: float = 0.0  # RMSNorm scales by (offset + weight): Gemma stores w, uses 1 + w
    embed_scale: bool = False  # embeddings times sqrt(hidden_size) (Gemma)
    packed: bool = False  # q/k/v and gate/up stored as one qkv_proj / gate_up_proj (Phi-3):
    # the loader splits them (models/weights.py), so nothing else sees the packing
    sandwich_norms: bool = False  # norms after attention and MLP too (Gemma-2): the block is
    # x + post_attn(attn(input(x))), then + post_ff(mlp(pre_ff(x)))
    attn_softcap_key: str | None = None  # config key: scores -> cap * tanh(scores / cap)
    final_softcap_key: str | None = None  # config key: logits -> cap * tanh(logits / cap)
    query_scale_key: str | None = None  # config key: scores scaled by its ** -0.5, not head_dim's
    window_pattern: int = 0  # sliding_window on some layers only, for a config without
    # layer_types: every n-th layer (i + 1 divisible by n) is global, the others local
    # (Gemma-2: 2, Gemma-3: sliding_window_pattern, 6 by default); 0: the window is on all layers
    local_rope_key: str | None = None  # config key of the local layers' own rope theta, for
    # a config without per-layer-type rope_parameters (Gemma-3's rope_local_base_freq)
    experts_key: str | None = None  # config key of the expert count: a mixture of experts
    # (models/moe.py) in the layers moe_layers picks
    expert_size_key: str = "intermediate_size"  # config key of one expert's MLP width
    shared_expert_key: str | None = None  # config key of the shared expert's width (Qwen2-MoE)
    norm_topk_key: str | None = None  # config key: renormalise the top-k weights; None: always
    renames: tuple[tuple[str, str], ...] = ()  # checkpoint name pieces -> ours (HF's Qwen ones)
    attn_sinks: bool = False  # a learned logit per head joins each softmax (gpt-oss)
    router_bias: bool = False  # the router has a bias (gpt-oss)
    expert_bias: bool = False  # the experts' projections have biases (gpt-oss)
    expert_glu_keys: tuple[tuple[str, float], ...] | None = None  # gpt-oss's expert GLU:
    # (config key, default) of alpha and limit: gate clamped to <= limit, up to +-limit,
    # (up + 1) * gate * sigmoid(alpha gate); its experts are stored stacked and transposed,
    # gate / up interleaved (released in MXFP4: models/weights.py)


MIXTRAL_NAMES = (("block_sparse_moe.", "mlp."), (".w1.", ".gate_proj."), (".w3.", ".up_proj."),
                 (".w2.", ".down_proj."))

FAMILIES: dict[str, Family] = {
    "LlamaForCausalLM": Family("llama", bias_flag="attention_bias"),
    "MistralForCausalLM": Family("mistral", bias_flag="attention_bias"),
    "Qwen2ForCausalLM": Family("qwen2", qkv_bias=True, window_switch="use_sliding_window"),
    "Qwen3ForCausalLM": Family("qwen3", bias_flag="attention_bias", qk_norm=True,
                               window_switch="use_sliding_window"),
    "GemmaForCausalLM": Family("gemma", bias_flag="attention_bias", activation="gelu_tanh",
                               norm_offset=1.0, embed_scale=True),
    "Phi3ForCausalLM": Family("phi3", packed=True),
    "Gemma2ForCausalLM": Family("gemma2", bias_flag="attention_bias", activation="gelu_tanh",
                                norm_offset=1.0, embed_scale=True, sandwich_norms=True,
                                attn_softcap_key="attn_logit_softcapping",
                                final_softcap_key="final_logit_softcapping",
                                query_scale_key="query_pre_attn_scalar", window_pattern=2),
    "Gemma3ForCausalLM": Family("gemma3", bias_flag="attention_bias", activation="gelu_tanh",
                                norm_offset=1.0, embed_scale=True, sandwich_norms=True,
                                qk_norm=True, attn_softcap_key="attn_logit_softcapping",
                                final_softcap_key="final_logit_softcapping",
                                query_scale_key="query_pre_attn_scalar", window_pattern=6,
                                local_rope_key="rope_local_base_freq"),
    "MixtralForCausalLM": Family("mixtral", experts_key="num_local_experts",
                                 renames=MIXTRAL_NAMES),
    "GptOssForCausalLM": Family("gpt_oss", bias_flag="attention_bias",
                                experts_key="num_local_experts", attn_sinks=True,
                                router_bias=True, expert_bias=True,
                                expert_glu_keys=(("swiglu_alpha", 1.702),
                                                 ("swiglu_limit", 7.0)),
                                renames=(("mlp.router.", "mlp.gate."),)),
    "Qwen2MoeForCausalLM": Family("qwen2_moe", qkv_bias=True, window_switch="use_sliding_window",
                                  experts_key="num_experts",
                                  expert_size_key="moe_intermediate_size",
                                  shared_expert_key="shared_expert_intermediate_size",
                                  norm_topk_key="norm_topk_prob"),
    "Qwen3MoeForCausalLM": Family("qwen3_moe", bias_flag="attention_bias", qk_norm=True,
                                  window_switch="use_sliding_window", experts_key="num_experts",
                                  expert_size_key="moe_intermediate_size",
                                  norm_topk_key="norm_topk_prob"),
}


def family_named(name: str) -> Family:
    """The entry whose name a ModelArgs (or a manifest) records as its architecture."""
    return next(f for f in FAMILIES.values() if f.name == name)
