"""After every export: the bundle, run by our runtime, must reproduce the torch model's logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgespec.manifest import GraphSpec, ModelInfo
from edgespec.masks import causal_bias
from edgespec.runtime.kv import KVCache
from edgespec.runtime.providers import SessionConfig, create_session
from edgespec.runtime.target import TargetRunner

FP32_TOLERANCE = 1e-3  # max |logit difference|; fp32 graphs measure ~1e-5 on the reference model
# int4 weights change logits by design: the gate is agreement of the top-1 token with fp32 torch
# on the checked rows (the reference model measures >= 0.95; a broken graph gives ~1/V)
INT4_MIN_TOP1 = 0.75


class ParityError(RuntimeError):
    pass


def check_parity(bundle_dir: Path, spec: GraphSpec, info: ModelInfo, model, seed: int = 0,
                 prompt_len: int = 24, int4: bool = False) -> float:
    """Max |logits(ONNX) - logits(torch)| over a prefill and a tree-masked verify step.

    The verify step feeds 4 tokens after the prompt as a small tree (two siblings at the same
    depth, arbitrary position ids), which is what speculative decoding asks of the graph.
    fp32 graphs must stay within FP32_TOLERANCE; int4 graphs must agree on the top-1 token.
    """
    a = model.args
    rng = np.random.default_rng(seed)
    session = create_session(str(Path(bundle_dir) / spec.file), SessionConfig())
    kv = KVCache(info.num_layers, info.num_kv_heads, info.head_dim, info.max_len)
    runner = TargetRunner(session, spec, info, kv)
    mask = spec.mask_value
    prompt_len = min(prompt_len, info.max_len - 4)
    ids = rng.integers(0, a.vocab_size, prompt_len)
    pos = np.arange(prompt_len)
    bias = causal_bias(0, prompt_len, mask)
    onnx_logits = [runner.forward(ids, pos, bias, np.arange(prompt_len)).logits.copy()]
    # tree: t0 -> t1, t0 -> t2 (sibling of t1), t1 -> t3
    tree_ids = rng.integers(0, a.vocab_size, 4)
    tree_pos = prompt_len + np.array([0, 1, 1, 2])
    tree_bias = causal_bias(prompt_len, 4, mask)
    tree_bias[0, 0, 2, prompt_len + 1] = mask  # t2 does not see t1
    tree_bias[0, 0, 3, prompt_len + 2] = mask  # t3 does not see t2
    onnx_logits.append(runner.forward(tree_ids, tree_pos, tree_bias, np.arange(4)).logits.copy())

    with torch.no_grad():
        past = [(torch.zeros(1, a.n_kv_heads, 0, a.head_dim),) * 2 for _ in range(a.n_layers)]
        t_ids = torch.from_numpy(ids)[None]
        ref0, _, kv, _ = model(t_ids, torch.from_numpy(pos)[None], torch.from_numpy(bias), past)
        ref1, _, _, _ = model(torch.from_numpy(tree_ids)[None], torch.from_numpy(tree_pos)[None],
                              torch.from_numpy(tree_bias), kv)
    ours = np.concatenate(onnx_logits)  # [rows, V]
    ref = np.concatenate([ref0[0].numpy(), ref1[0].numpy()])
    diff = float(np.abs(ours - ref).max())
    top1 = float((ours.argmax(-1) == ref.argmax(-1)).mean())
    if int4 and not top1 >= INT4_MIN_TOP1:
        raise ParityError(f"int4 {spec.file} agrees with the fp32 torch model on the top token "
                          f"in {top1:.0%} of rows (needs {INT4_MIN_TOP1:.0%}); try a smaller "
                          "--block-size; the export was not written")
    if not int4 and not diff <= FP32_TOLERANCE:
        raise ParityError(f"exported {spec.file} differs from the torch model by {diff:.3g} in "
                          f"logits (tolerance {FP32_TOLERANCE:g}); the export was not written")
    return diff
