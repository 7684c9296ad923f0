"""VocabTrim: a drafter's LM head keeps only the K tokens the target emits most often.

Calibration counts the target's own generated tokens (the self-distillation data: the paper
found target-generated text the best calibration source); `d2t` ([K] int64, ascending target
ids) maps draft ids back to target ids. Verification stays on the full vocabulary, so greedy
output is unchanged and speculative sampling stays lossless (the draft distribution is zero
outside the K tokens).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .distill import DistillData

COUNTS_FILE = "token_counts.safetensors"


def token_counts(data: DistillData, vocab_size: int) -> np.ndarray:
    """[V] int64: how often the target generated each token (prompts excluded)."""
    counts = np.zeros(vocab_size, np.int64)
    for i in range(len(data)):
        seq = data.sequence(i)[int(data.prompt_lengths[i]):]
        counts += np.bincount(seq, minlength=vocab_size)[:vocab_size]
    return counts


def trim_ids(counts: np.ndarray, k: int) -> np.ndarray:
    """d2t: the k most frequent target ids (ties to the lower id), ascending."""
    if not 0 < k <= len(counts):
        raise ValueError(f"--trim-vocab must be in 1..{len(counts)}, got {k}")
    order = np.lexsort((np.arange(len(counts)), -counts))  # by count desc, then id asc
    return np.sort(order[:k]).astype(np.int64)


def save_counts(folder: str | Path, counts: np.ndarray) -> None:
    from safetensors.numpy import save_file

    save_file({"counts": counts.astype(np.int64)}, str(Path(folder) / COUNTS_FILE))


def load_counts(folder: str | Path) -> np.ndarray | None:
    from safetensors.numpy import load_file

    path = Path(folder) / COUNTS_FILE
    return load_file(str(path))["counts"] if path.is_file() else None


def coverage(counts: np.ndarray, d2t: np.ndarray) -> float:
    """Share of the target's generated tokens that the trimmed vocabulary can propose."""
    return float(counts[d2t].sum() / max(counts.sum(), 1))
