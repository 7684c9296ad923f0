"""Self-distillation data (Medusa's recipe when no dataset is given): the target's own
continuations of prompts, generated with the exported runtime and stored without pickle.

File format (safetensors): `tokens` int32 [T] (every sequence's prompt then continuation,
concatenated), `offsets` int64 [N+1] (sequence i is tokens[offsets[i]:offsets[i+1]]),
`prompt_lengths` int64 [N]; metadata: bundle fingerprint, seed, temperature, max_new_tokens.
Deterministic for a given bundle, prompt list and seed.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file
from tqdm import tqdm

from edgespec.runtime.generator import GenerationParams, Generator
from edgespec.runtime.model import Model
from edgespec.sampling import SamplingParams


@dataclass(frozen=True)
class DistillData:
    tokens: np.ndarray  # [T] int32
    offsets: np.ndarray  # [N+1] int64
    prompt_lengths: np.ndarray  # [N] int64
    meta: dict

    def __len__(self) -> int:
        return len(self.prompt_lengths)

    def sequence(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]


def source_files(roots: Sequence[str | Path], pattern: str = "*.py",
                 exclude: Sequence[str] = ()) -> list[Path]:
    """Files matching `pattern` under each root (or the roots themselves when they are files),
    minus those whose path relative to their root matches an `exclude` glob; sorted."""
    out = []
    for root in map(Path, roots):
        if root.is_file():
            out.append(root)
            continue
        if not root.is_dir():
            raise FileNotFoundError(f"source {root} is neither a file nor a folder")
        for f in root.rglob(pattern):
            rel = f.relative_to(root).as_posix()
            if f.is_file() and not any(fnmatch.fnmatch(rel, x) for x in exclude):
                out.append(f)
    if not out:
        raise ValueError(f"no {pattern} files under {', '.join(map(str, roots))}")
    return sorted(out)


def prompts_from_sources(paths: Sequence[Path], n: int, prompt_tokens: int, tokenizer,
                         seed: int) -> list[list[int]]:
    """n prompts of `prompt_tokens` tokens cut at random places from text files (e.g. Python
    sources for a code model); deterministic for a seed and a sorted file list."""
    rng = np.random.default_rng(seed)
    docs = [tokenizer.encode(Path(p).read_text(encoding="utf-8", errors="replace"))
            for p in sorted(map(str, paths))]
    docs = [d for d in docs if len(d) > prompt_tokens + 1]
    if not docs:
        raise ValueError(f"no source file is longer than {prompt_tokens} tokens")
    out = []
    for _ in range(n):
        d = docs[rng.integers(len(docs))]
        start = int(rng.integers(0, len(d) - prompt_tokens))
        out.append(d[start:start + prompt_tokens])
    return out


def generate_data(model: Model, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                  seed: int = 0, temperature: float = 0.0,
                  progress: bool = False) -> DistillData:
    """The target's continuation of every prompt (greedy, or sampled with one rng per prompt
    seeded from `seed`, so the data does not depend on batching or order)."""
    seqs, plens = [], []
    sampling = SamplingParams(temperature=temperature)
    # greedy speculative decoding is token-identical to plain greedy decoding, so n-gram
    # lookup only makes the data faster to generate; sampled data keeps the plain loop, whose
    # rng draws do not depend on what a drafter proposed
    drafter = model.drafter("ngram") if sampling.greedy and "ngram" in model.manifest.drafters else None
    for i, ids in enumerate(tqdm(prompts, desc="distill", unit="seq", disable=not progress)):
        gen = Generator(model, GenerationParams(max_new_tokens=max_new_tokens, sampling=sampling,
                                                seed=seed * 1_000_003 + i), drafter=drafter)
        gen.append_tokens(list(ids))
        while not gen.is_done():
            gen.step()
        seqs.append(np.asarray(gen.tokens, np.int32))
        plens.append(len(ids))
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64)
    meta = {"fingerprint": model.manifest.model.fingerprint, "seed": str(seed),
            "temperature": str(temperature), "max_new_tokens": str(max_new_tokens)}
    return DistillData(np.concatenate(seqs), offsets, np.asarray(plens, np.int64), meta)


def concat_data(parts: Sequence[DistillData]) -> DistillData:
    """One dataset of several (e.g. code and chat shards made side by side) from one target."""
    prints = {d.meta.get("fingerprint", "") for d in parts}
    if not parts or len(prints) > 1:
        raise ValueError("concat_data needs one or more datasets made by the same target")
    sizes = np.cumsum([0] + [len(d.tokens) for d in parts[:-1]])
    offsets = np.concatenate([[0]] + [d.offsets[1:] + s for d, s in zip(parts, sizes)])
    meta = {**parts[0].meta, "parts": str(len(parts))}
    return DistillData(np.concatenate([d.tokens for d in parts]), offsets.astype(np.int64),
                       np.concatenate([d.prompt_lengths for d in parts]), meta)


def save_data(data: DistillData, path: str | Path) -> None:
    save_file({"tokens": data.tokens, "offsets": data.offsets,
               "prompt_lengths": data.prompt_lengths}, str(path), metadata=data.meta)


def load_data(path: str | Path) -> DistillData:
    from safetensors import safe_open

    arrays = load_file(str(path))
    with safe_open(str(path), framework="numpy") as f:
        meta = dict(f.metadata() or {})
    missing = {"tokens", "offsets", "prompt_lengths"} - set(arrays)
    if missing:
        raise ValueError(f"{path} is not edgespec distillation data (missing {sorted(missing)})")
    return DistillData(arrays["tokens"], arrays["offsets"], arrays["prompt_lengths"], meta)


def read_jsonl_prompts(path: str | Path, model: Model) -> list[list[int]]:
    """Prompt ids from a jsonl: a row's `prompt` text, or its chat `messages` (OpenAI form)
    rendered by the bundle's chat template with the assistant's turn opened."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if isinstance(row, dict) and isinstance(row.get("prompt"), str):
                out.append(model.tokenizer.encode(row["prompt"]))
            elif isinstance(row, dict) and isinstance(row.get("messages"), list):
                out.append(model.chat_prompt(row["messages"]))
            else:
                raise ValueError(f"{path}:{n}: a prompts row needs a 'prompt' string or a "
                                 "'messages' list")
    return out
