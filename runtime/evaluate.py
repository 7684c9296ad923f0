"""`edgespec eval`: run a bundle over a jsonl of prompts, one result row per prompt."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .generator import GenerationParams, Generator
from .mbsu import draft_cost
from .model import Model


@dataclass(frozen=True)
class EvalSummary:
    prompts: int
    new_tokens: int
    target_forwards: int
    seconds: float
    mbsu: float | None = None  # token-weighted mean over the rows


    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_forward(self) -> float:
        return self.new_tokens / self.target_forwards if self.target_forwards else 0.0

    def line(self) -> str:
        return (f"eval: {self.prompts} prompts, {self.new_tokens} new tokens in "
                f"{self.seconds:.2f} s: {self.tokens_per_second:.1f} tokens/s, "
                f"{self.tokens_per_forward:.2f} tokens per target forward"
                + (f", MBSU {self.mbsu:.2f}" if self.mbsu is not None else ""))


def read_prompts(path: str | Path) -> list[dict]:
    """Rows {"id", "prompt"} of a jsonl file (a regular file: a device or a FIFO such as
    /dev/zero would be read forever)."""
    rows = []
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ValueError(f"{path} is not a regular file; pass a jsonl file of prompts")
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{n} is not UTF-8 (bad byte at column {e.start + 1}); "
                                 "save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n} is not valid JSON ({e})") from e
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise ValueError(f"{path}:{n} needs a string 'prompt' field")
            rows.append({"id": row.get("id", n - 1), "prompt": row["prompt"]})
    if not rows:
        raise ValueError(f"{path} holds no prompts")
    return rows


def run_eval(model: Model, rows: list[dict], params: GenerationParams,
             drafter: str | None = None, gamma: int | None = None,
             tree_width: int | None = None, tree_size: int | None = None,
             min_n: int | None = None) -> Iterator[dict]:
    """Yield one result row per prompt, decoded with `drafter` (None/'none': autoregressive;
    'auto': what `run` decodes with, paced: Model.drafter)."""
    draft = model.drafter(drafter, gamma, tree_width, tree_size, min_n=min_n)
    drafter = "none" if draft is None else draft.name
    for row in rows:
        gen = Generator(model, params, draft)
        t = time.perf_counter()
        gen.append_tokens(model.tokenizer.encode(row["prompt"]))
        while not gen.is_done():
            gen.step()
        seconds = time.perf_counter() - t
        out = gen.new_tokens
        st = gen.stats
        tau = len(out) / max(st.target_forwards, 1)
        # the context the forwards read on average: the prompt and half the new tokens
        cost = draft_cost(model.manifest, drafter, draft, st.prompt_tokens + len(out) / 2,
                          st.verified_tokens / max(st.target_forwards, 1))
        yield {"id": row["id"], "output_ids": out, "text": model.tokenizer.decode(out),
               "new_tokens": len(out), "prompt_tokens": st.prompt_tokens,
               "target_forwards": st.target_forwards, "seconds": round(seconds, 6),
               "prefill_seconds": round(st.prefill_seconds, 6),
               "ttft_seconds": round(st.first_token_seconds or 0.0, 6),
               "drafter": drafter,
               "accepted_lengths": st.accepted_lengths,
               "mean_accepted": round(tau, 4),
               "draft_cost": None if cost is None else round(cost, 5),
               "mbsu": None if cost is None else round(tau / (1 + cost), 4),
               "stop_reason": gen.stop_reason}


def summarize(results: list[dict]) -> EvalSummary:
    new = sum(r["new_tokens"] for r in results)
    forwards = sum(r["target_forwards"] for r in results)
    mbsu = None
    if forwards and all(r.get("draft_cost") is not None for r in results):
        cost = sum(r["draft_cost"] * r["target_forwards"] for r in results) / forwards
        mbsu = new / forwards / (1 + cost)  # overall tau over the forward-weighted draft cost
    return EvalSummary(prompts=len(results), new_tokens=new, target_forwards=forwards,
                       seconds=sum(r["seconds"] for r in results), mbsu=mbsu)
