"""Tiny Llama GGUF files written in-process with the gguf package's writer, as llama.cpp's
converter lays them out (tensor names, q / k rows permuted for its rope, a gpt2-style BPE
tokenizer in the metadata), each tensor in a chosen block type."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TOKENIZER = Path(__file__).resolve().parents[1] / "demo/pyref-target/tokenizer.json"
DIMS = dict(dim=64, layers=2, heads=4, kv_heads=2, hidden=96, vocab=8192)
# one block type per weight; widths are multiples of 32 (the legacy types' block)
TYPES = {"attn_q": "Q4_1", "attn_k": "Q4_0", "attn_v": "Q8_0", "attn_output": "Q5_1",
         "ffn_gate": "Q4_1", "ffn_up": "Q4_0", "ffn_down": "Q5_0", "token_embd": "F16",
         "output": "Q4_1"}


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q / k row order (convert_hf_to_gguf's permute): halves interleaved."""
    return (w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def write_tiny_gguf(path: Path, seed: int = 0, types: dict | None = None,
                    arch: str = "llama", chat_template: str | None = None) -> Path:
    import gguf
    from gguf.quants import quantize

    types = {**TYPES, **(types or {})}
    d = DIMS
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(d["layers"])
    w.add_context_length(256)
    w.add_embedding_length(d["dim"])
    w.add_feed_forward_length(d["hidden"])
    w.add_head_count(d["heads"])
    w.add_head_count_kv(d["kv_heads"])
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_dimension_count(d["dim"] // d["heads"])
    w.add_vocab_size(d["vocab"])
    tok = json.loads(TOKENIZER.read_text())
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if i == 0 else 1 for i in range(len(vocab))])
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    if chat_template:
        w.add_chat_template(chat_template)

    def tensor(name: str, kind: str, shape: tuple[int, int], scale: float = 0.08,
               rows: np.ndarray | None = None) -> None:
        data = rows if rows is not None else (
            rng.standard_normal(shape).astype(np.float32) * scale)
        qtype = gguf.GGMLQuantizationType[types[kind]]
        if types[kind] in ("F32", "F16"):
            w.add_tensor(name, data.astype(np.float16 if types[kind] == "F16" else np.float32))
        else:
            w.add_tensor(name, quantize(data, qtype), raw_dtype=qtype)

    h, hkv, hd = d["heads"], d["kv_heads"], d["dim"] // d["heads"]
    tensor("token_embd.weight", "token_embd", (d["vocab"], d["dim"]), 0.5)
    for i in range(d["layers"]):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", (1 + 0.1 * rng.standard_normal(d["dim"]))
                     .astype(np.float32))
        w.add_tensor(p + "ffn_norm.weight", (1 + 0.1 * rng.standard_normal(d["dim"]))
                     .astype(np.float32))
        q = rng.standard_normal((h * hd, d["dim"])).astype(np.float32) * 0.15
        k = rng.standard_normal((hkv * hd, d["dim"])).astype(np.float32) * 0.15
        tensor(p + "attn_q.weight", "attn_q", q.shape, rows=_permute(q, h))
        tensor(p + "attn_k.weight", "attn_k", k.shape, rows=_permute(k, hkv))
        tensor(p + "attn_v.weight", "attn_v", (hkv * hd, d["dim"]))
        tensor(p + "attn_output.weight", "attn_output", (d["dim"], h * hd))
        tensor(p + "ffn_gate.weight", "ffn_gate", (d["hidden"], d["dim"]))
        tensor(p + "ffn_up.weight", "ffn_up", (d["hidden"], d["dim"]))
        tensor(p + "ffn_down.weight", "ffn_down", (d["dim"], d["hidden"]))
    w.add_tensor("output_norm.weight", np.ones(d["dim"], np.float32))
    tensor("output.weight", "output", (d["vocab"], d["dim"]), 0.3)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
