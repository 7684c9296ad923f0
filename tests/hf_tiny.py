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
    # Qwen3's attention_bias puts a bias on q/k/v and o (models/families.py bias_flag)
    "qwen3_bias": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM,
                   dict(head_dim=32, attention_bias=True)),
    # GELU-tanh, (1 + w) RMSNorms, sqrt(d) embedding scale, tied head (models/families.py)
    "gemma": (transformers.GemmaConfig, transformers.GemmaForCausalLM, dict(head_dim=16)),
    # packed qkv_proj / gate_up_proj, split by the loader (models/families.py packed)
    "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM, {}),
    # sandwich norms, soft-capped scores and logits, query_pre_attn_scalar; its window (on
    # half the layers) spans the whole context here, which is what bundles support
    "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM,
               dict(head_dim=16, query_pre_attn_scalar=24, sliding_window=256)),
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
