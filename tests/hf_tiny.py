"""Tiny random HF checkpoints of each supported architecture, built in-process for tests."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

BASE = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=0)

CONFIGS = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
    "llama3_rope_tied": (transformers.LlamaConfig, transformers.LlamaForCausalLM, dict(
        tie_word_embeddings=True, attention_bias=True,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=64))),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM,
                dict(sliding_window=None)),
    "mistral_window": (transformers.MistralConfig, transformers.MistralForCausalLM,
                       dict(sliding_window=12)),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
              dict(tie_word_embeddings=True)),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, dict(head_dim=32)),
    # YaRN: 4x the original 64 positions, the band between 32 and 1 rotations ramped
    "qwen3_yarn": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, dict(
        head_dim=32, rope_scaling=dict(rope_type="yarn", factor=4.0,
                                       original_max_position_embeddings=64))),
    # Qwen3's attention_bias puts a bias on q/k/v and o (models/families.py bias_flag)
    "qwen3_bias": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM,
                   dict(head_dim=32, attention_bias=True)),
    # GELU-tanh, (1 + w) RMSNorms, sqrt(d) embedding scale, tied head (models/families.py)
    "gemma": (transformers.GemmaConfig, transformers.GemmaForCausalLM, dict(head_dim=16)),
    # packed qkv_proj / gate_up_proj, split by the loader (models/families.py packed)
    "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM, {}),
    # Phi-4-mini's rope: partial rotary (16 of 32 dims) and longrope (short factors within
    # the original 64 positions, cos and sin scaled by sqrt(1 + ln 4 / ln 64))
    "phi3_longrope": (transformers.Phi3Config, transformers.Phi3ForCausalLM, dict(
        num_attention_heads=2, num_key_value_heads=1, partial_rotary_factor=0.5,
        original_max_position_embeddings=64,
        rope_scaling=dict(rope_type="longrope",
                          short_factor=[1.0, 1.1, 1.3, 1.6, 2.0, 2.5, 3.0, 3.5],
                          long_factor=[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 48.0, 64.0]))),
    # sandwich norms, soft-capped scores and logits, query_pre_attn_scalar; a window of 8
    # on the even layers (the tests' prompts and bundles run past it)
    "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM,
               dict(head_dim=16, query_pre_attn_scalar=24, sliding_window=8,
                    num_hidden_layers=4)),
    # q/k norms, a window of 8 on layers 0-2 with their own rope theta, linear rope scaling
    # on the global layer 3 (Gemma-3's 5:1 pattern, shortened)
    "gemma3": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM,
               dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=8, num_hidden_layers=4,
                    layer_types=["sliding_attention"] * 3 + ["full_attention"],
                    rope_parameters={"sliding_attention": dict(rope_type="default",
                                                               rope_theta=10000.0),
                                     "full_attention": dict(rope_type="linear", factor=8.0,
                                                            rope_theta=1000000.0)})),
    # mixtures of experts: softmax top-2 of 4 with renormalised weights (Mixtral); top-2 of 4
    # unnormalised, a gated shared expert, a dense MLP on layer 1 (Qwen2-MoE); q/k norms
    "mixtral": (transformers.MixtralConfig, transformers.MixtralForCausalLM,
                dict(num_local_experts=4, num_experts_per_tok=2)),
    "qwen2_moe": (transformers.Qwen2MoeConfig, transformers.Qwen2MoeForCausalLM,
                  dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=48,
                       shared_expert_intermediate_size=80, num_hidden_layers=3,
                       mlp_only_layers=[1])),
    "qwen3_moe": (transformers.Qwen3MoeConfig, transformers.Qwen3MoeForCausalLM,
                  dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=48,
                       head_dim=32, norm_topk_prob=True)),
    # gpt-oss: attention sinks, a window of 8 on every other layer, YaRN, a biased router and
    # biased experts with the clamped GLU, stored stacked and transposed
    "gpt_oss": (transformers.GptOssConfig, transformers.GptOssForCausalLM,
                dict(head_dim=16, num_local_experts=4, num_experts_per_tok=2, sliding_window=8,
                     intermediate_size=32, num_hidden_layers=4)),
    # Mellum 2's shape, shrunk: 64 experts, 8 active, 4 KV heads, a sliding window on 3 of
    # every 4 layers
    "mellum_moe": (transformers.Qwen2MoeConfig, transformers.Qwen2MoeForCausalLM,
                   dict(num_experts=64, num_experts_per_tok=8, moe_intermediate_size=16,
                        shared_expert_intermediate_size=32, num_hidden_layers=4,
                        hidden_size=128, num_attention_heads=8, num_key_value_heads=4,
                        norm_topk_prob=True,
                        use_sliding_window=True, sliding_window=8,
                        layer_types=["sliding_attention"] * 3 + ["full_attention"])),
}


def make_tiny(kind: str, out_dir: Path, seed: int = 0) -> Path:
    """Save a random-weight HF model of `kind` to out_dir and return it."""
    cfg_cls, model_cls, extra = CONFIGS[kind]
    torch.manual_seed(seed)
    model = model_cls(cfg_cls(**{**BASE, **extra})).eval()
    # random init is near-uniform; scale up so argmax decisions are meaningful in tests
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0) if p.dim() > 1 else None
        for name, p in model.named_parameters():  # gpt-oss's experts' biases start at 0,
            if name.endswith("_bias") and not p.any():  # its sinks near it: make them count
                p.normal_(0.0, 0.5)
            elif name.endswith("sinks"):
                p.normal_(0.0, 2.0)
    model.save_pretrained(out_dir, safe_serialization=True)
    save_tiny_tokenizer(out_dir)
    return out_dir


def save_tiny_tokenizer(out_dir: Path, vocab_size: int = BASE["vocab_size"]) -> None:
    """A word-level tokenizer over 't0'..'tN' words (ids 0-2 special), enough for export/run."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.save(str(Path(out_dir) / "tokenizer.json"))
