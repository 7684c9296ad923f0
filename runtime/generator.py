"""The step-wise Generator (append tokens, step, rewind_to): what the flat API
(runtime/completions.py), the CLI and the server drive.

Invariant: every token of `tokens` except the last is in the KV cache; the last one is
pending and is fed by the next forward. A speculative step feeds [pending, drafts...] as a
tree the same way, keeps the accepted nodes' K/V and ends with the target's bonus token
pending, so autoregressive and speculative decoding share this state.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
import weakref
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from edgespec.runtime.accept import accept_greedy, accept_greedy_argmax, accept_sample, accept_typical
from edgespec.graph_contract import bias_window
from edgespec.masks import window_bias
from edgespec.sampling import SamplingParams, probabilities, sample
from edgespec.tree import DraftTree, depths, tree_bias

from .drafter_base import Drafter
from .generation_params import Accept, GenerationParams, Stats, StopReason, _is_int
from .text import TextStream

# the parameter and result types live in generation_params; importable from here as before
__all__ = ["Accept", "GenerationParams", "Generator", "Stats", "StopReason"]

if TYPE_CHECKING:  # the Model imports this module's callers lazily
    from .model import Model


def _release(model: Model, runner, drafter, draft_state) -> None:
    """Hand a finished Generator's runners back: the target's and its drafter's state's."""
    model.release_runner(runner)
    if drafter is not None:
        drafter.release(draft_state)


def _one_thread(method):
    """Generators are per-thread (they share the Model): a second thread calling in while one
    is inside gets a clear error instead of silently interleaved state."""
    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("this Generator is in use by another thread; create one "
                               "Generator per thread (they share the Model)")
        try:
            return method(self, *args, **kwargs)
        finally:
            self._busy.release()
    return guarded


class Generator:
    def __init__(self, model: Model, params: GenerationParams = GenerationParams(),
                 drafter=None, cancel: threading.Event | None = None):
        """drafter: None (autoregressive) or a drafter from model.drafter(name); cancel: an
        event another thread may set to stop this generator (or call `cancel()`)."""
        try:  # (importing Model here would close an import cycle through completions.py)
            new_runner = model.new_runner
        except AttributeError:
            raise ValueError(f"model must be an edgespec.Model (Model(bundle_dir)), got "
                             f"{type(model).__name__}") from None
        if isinstance(drafter, str):
            raise ValueError(f"drafter must be a drafter object, got the name {drafter[:40]!r}: "
                             "pass model.drafter(name)")
        if drafter is not None and not isinstance(drafter, Drafter):
            raise ValueError(f"drafter must come from model.drafter(name) (a Drafter), got "
                             f"{type(drafter).__name__}")
        if not isinstance(params, GenerationParams):
            raise ValueError(f"params must be GenerationParams, got {type(params).__name__}")
        self.model, self.params = model, params
        self._busy = threading.Lock()  # see _one_thread
        self._cancelled = cancel if cancel is not None else threading.Event()
        self.drafter = drafter
        self.draft_state = drafter.new_state() if drafter is not None else None
        # drafters that read the target's hidden states see every row the cache keeps
        self._observe = drafter.observe if drafter is not None and drafter.reads_target \
            else None
        self.runner = new_runner()
        self.kv = self.runner.kv
        # the runners go back on close() or when this generator is collected (under CUDA
        # graphs the next Generator reuses them; otherwise they are dropped)
        self._release = weakref.finalize(self, _release, model, self.runner, drafter,
                                         self.draft_state)
        self.rng = np.random.default_rng(params.seed)
        self._tokens: list[int] = []
        self.prompt_len = 0
        self.stop_reason: StopReason | None = None
        self.stats = Stats()
        # decoded text of the new tokens, kept only when stop strings must be matched
        self.stop_text = TextStream(model.tokenizer) if params.stop_strings else None
        self._t0: float | None = None

    # ---------------------------------------------------------------- state

    @_one_thread
    def append_tokens(self, ids) -> None:
        """Add prompt (or user-turn) tokens; all but the last are prefilled into the cache now.
        If the prefill fails, the generator is left as it was."""
        if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
            raise ValueError(f"append_tokens takes a list of token ids, got {type(ids).__name__}"
                             "; encode text with model.tokenizer.encode(text) first")
        ids = list(ids)
        if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids):
            raise ValueError("append_tokens takes token ids (integers); encode text with "
                             "model.tokenizer.encode(text) first")
        self._check_open()
        ids = [int(i) for i in ids]
        vocab = self.model.manifest.model.vocab_size
        if not ids:
            raise ValueError("append_tokens got no tokens (an empty prompt?); pass at least one")
        if any(not 0 <= i < vocab for i in ids):
            raise ValueError(f"token ids must be in [0, {vocab}); got {min(ids)}..{max(ids)}")
        if len(self._tokens) + len(ids) > self.model.max_len - 1:
            raise ValueError(
                f"{len(self._tokens) + len(ids)} tokens do not fit this bundle's max_len "
                f"{self.model.max_len} (room is needed for at least one new token); shorten the "
                "prompt or export with a larger --max-len")
        t = time.perf_counter()
        with self._transaction():
            if self._t0 is None:
                self._t0 = t
            self._tokens += ids
            self.prompt_len = len(self._tokens)
            self.stats.prompt_tokens = self.prompt_len
            self.stop_reason = None
            while self.kv.length < len(self._tokens) - 1:  # chunked prefill of all but the last
                n = min(self.params.prefill_chunk, len(self._tokens) - 1 - self.kv.length)
                self._forward(self._tokens[self.kv.length:self.kv.length + n], last_only=True)
        self.stats.prefill_seconds += time.perf_counter() - t

    @contextmanager
    def _transaction(self):
        """A call that fails (an onnxruntime error, a sampling error) leaves the generator as
        it was: tokens, K/V length, statistics, stop reason and random state."""
        kv_len, n_tokens, prompt_len = self.kv.length, len(self._tokens), self.prompt_len
        stats, n_steps = dataclasses.replace(self.stats), len(self.stats.accepted_lengths)
        stop, t0 = self.stop_reason, self._t0
        rng = None if self.params.sampling.greedy else self.rng.bit_generator.state
        try:
            yield
        except BaseException:
            if self.runner is not None:  # not closed meanwhile
                self.kv.truncate(min(kv_len, self.kv.length))
            del self._tokens[n_tokens:]
            del stats.accepted_lengths[n_steps:]
            self.stats, self.prompt_len, self.stop_reason, self._t0 = stats, prompt_len, stop, t0
            if rng is not None:
                self.rng.bit_generator.state = rng
            raise

    @_one_thread
    def rewind_to(self, length: int) -> None:
        """Keep the first `length` tokens (onnxruntime-genai's rewind_to): O(1) on the cache."""
        self._check_open()
        if not _is_int(length) or not 0 <= length <= len(self._tokens):
            raise ValueError(f"cannot rewind to length {length!r}: the sequence holds "
                             f"{len(self._tokens)} tokens")
        del self._tokens[int(length):]
        if not self._tokens:  # a new conversation on the same buffers: fresh statistics, so a
            self.stats = Stats()  # long-lived generator's per-step list does not grow forever
            self._t0 = None
        self.kv.truncate(max(len(self._tokens) - 1, 0))
        self.prompt_len = min(self.prompt_len, len(self._tokens))
        self.stop_reason = None

    def is_done(self) -> bool:
        # a cancel is seen by the next step(), which ends with stop_reason 'cancelled': the
        # owner's loop ends there and the buffers are released by the thread that uses them
        return self.stop_reason is not None

    # ---------------------------------------------------------------- lifetime

    def cancel(self) -> None:
        """Stop from any thread: a step in flight finishes, the next one returns no tokens,
        sets stop_reason 'cancelled' and releases the buffers."""
        self._cancelled.set()

    @_one_thread
    def close(self) -> None:
        """Release the KV buffers, IO bindings and drafter state now (from the thread that
        steps: from another one while it steps this is an error; call cancel()); the
        generator cannot be used afterwards."""
        self._close()

    def _close(self) -> None:
        if self.runner is not None:
            self.runner = self.kv = self.draft_state = None
            self._release()
            self.stop_reason = (StopReason.CANCELLED if self._cancelled.is_set()
                                else StopReason.CLOSED)

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_open(self) -> None:
        if self.runner is None:
            raise RuntimeError(f"this generator is {self.stop_reason} and has released its "
                               "buffers; create a new Generator")

    @property
    def new_tokens(self) -> list[int]:
        return self._tokens[self.prompt_len:]

    @property
    def tokens(self) -> tuple[int, ...]:
        """The sequence so far (prompt and new tokens), read-only: the K/V cache holds all but
        the last, so only append_tokens / step / rewind_to may change it."""
        return tuple(self._tokens)

    # ---------------------------------------------------------------- decoding

    def _forward(self, ids: list[int], last_only: bool):
        """Feed ids at the next positions (causal); logits of the last row only or of all."""
        past, s = self.kv.length, len(ids)
        mi = self.model.manifest
        bias = window_bias(past, s, mi.target.mask_value,
                           bias_window(mi.target, mi.model.sliding_window))
        rows = np.array([s - 1] if last_only else range(s), dtype=np.int64)
        out = self.runner.forward(np.asarray(ids, np.int64), np.arange(past, past + s),
                                  bias, rows)
        if self._observe is not None:
            self._observe(self.draft_state, past, out.hidden, out.features)
        return out

    @_one_thread
    def next_token(self) -> int:
        """One autoregressive step: feed the pending token, pick the next one, check stops.
        It ignores the drafter (step() uses it); a failed call leaves the generator as it was."""
        self._check_can_step()
        with self._transaction():
            return self._next_token()

    def _next_token(self) -> int:
        t, run0 = time.perf_counter(), self.runner.run_seconds
        fed = self._tokens[self.kv.length:]
        out = self._forward(fed, last_only=True)
        self.stats.target_run_seconds += self.runner.run_seconds - run0
        if self.params.sampling.greedy and out.argmax is not None:
            token = int(out.argmax[-1])  # the graph's argmax: same token, no [V] scan here
        else:
            token = sample(out.logits[-1], self.params.sampling, self.rng)
        self.stats.target_forwards += 1
        self.stats.verified_tokens += len(fed)
        self.stats.accepted_lengths.append(1)
        self._commit([token])
        self.stats.decode_seconds += time.perf_counter() - t
        return token

    def _check_can_step(self) -> None:
        if self._cancelled.is_set():
            self._close()
        self._check_open()
        if self.stop_reason is not None:
            raise RuntimeError(f"generation has stopped ({self.stop_reason}); rewind_to or append "
                               "tokens to continue")
        if not self._tokens:
            raise RuntimeError("append_tokens (the prompt) before stepping")
        if len(self._tokens) >= self.model.max_len:  # e.g. rewind_to(len) at the limit
            raise RuntimeError(f"the sequence fills this bundle's max_len {self.model.max_len}; "
                               "rewind_to a shorter length (or export with a larger --max-len)")

    def _commit(self, new: list[int]) -> list[int]:
        """Append generated tokens up to the first stop; returns those kept."""
        kept = []
        for token in new:
            self._tokens.append(token)
            kept.append(token)
            self.stats.new_tokens += 1
            if self.stats.first_token_seconds is None and self._t0 is not None:
                self.stats.first_token_seconds = time.perf_counter() - self._t0
            if self.stop_text is not None:
                self.stop_text.push(token)
            if self.params.stop_on_eos and token in self.model.eos_token_ids:
                self.stop_reason = StopReason.EOS
            elif self.stop_text is not None and any(
                    s in self.stop_text.text for s in self.params.stop_strings):
                self.stop_reason = StopReason.STOP_STRING
            elif len(self._tokens) - self.prompt_len >= self.params.max_new_tokens:
                self.stop_reason = StopReason.MAX_NEW_TOKENS
            elif len(self._tokens) >= self.model.max_len:
                self.stop_reason = StopReason.MAX_LENGTH
            if self.stop_reason:
                break
        return kept

    @_one_thread
    def step(self) -> list[int]:
        """One decoding step; returns the tokens it added (one autoregressively, 1..n+1 when
        a drafter's proposal of n tokens is verified). A failed step leaves the generator as
        it was."""
        if self._cancelled.is_set():  # asked to stop between steps: a normal end, no error
            self._close()
            return []
        self._check_can_step()
        with self._transaction():
            return [self._next_token()] if self.drafter is None else self._speculative_step()

    def _speculative_step(self) -> list[int]:
        t, draft0 = time.perf_counter(), self.drafter.forward_seconds(self.draft_state)
        tree = self.drafter.propose(self.draft_state, self._tokens, self.params.sampling,
                                    self.rng)
        self.stats.draft_run_seconds += self.drafter.forward_seconds(self.draft_state) - draft0
        room = min(self.kv.free, self.model.max_len - len(self._tokens) + 1)
        if tree.size == 1 or tree.size > room:
            self.stats.decode_seconds += time.perf_counter() - t
            kept = [self._next_token()]
            self.drafter.after_step(self.draft_state, 1, time.perf_counter() - t, 1)
            return kept
        run0 = self.runner.run_seconds
        new = self._verify(tree)
        self.stats.target_run_seconds += self.runner.run_seconds - run0
        kept = self._commit(new)
        self.kv.truncate(len(self._tokens) - 1)  # drop K/V of tokens cut by a stop condition
        self.stats.target_forwards += 1
        self.stats.verified_tokens += tree.size
        self.stats.accepted_lengths.append(len(kept))
        self.stats.decode_seconds += time.perf_counter() - t
        self.drafter.after_step(self.draft_state, tree.size, time.perf_counter() - t,
                                len(kept))
        return kept

    def _verify(self, tree: DraftTree) -> list[int]:
        """One target forward over the whole tree; returns the tokens the acceptance rule emits
        and leaves exactly the accepted nodes' K/V in the cache, in order."""
        past, n = self.kv.length, tree.size
        mi = self.model.manifest
        window = bias_window(mi.target, mi.model.sliding_window)
        bias = (window_bias(past, n, mi.target.mask_value, window) if tree.is_chain  # None:
                else tree_bias(tree.parents, past, mi.target.mask_value, window))  # causal
        out = self.runner.forward(tree.tokens, past + depths(tree.parents), bias,
                                  np.arange(n, dtype=np.int64))
        rule = self.params.accept
        if rule == "auto":
            rule = "greedy" if self.params.sampling.greedy else "sample"
        if rule == "greedy" and out.argmax is not None:
            verdict = accept_greedy_argmax(tree.tokens, tree.parents, out.argmax,
                                           self.runner.logits_width)
        elif rule == "greedy":
            verdict = accept_greedy(tree.tokens, tree.parents, out.logits)
        else:
            sp = self.params.sampling
            if sp.greedy:  # typical/sample at T = 0: the target distribution is one-hot
                sp = SamplingParams(temperature=1.0, top_k=1)
            p = np.stack([probabilities(row, sp) for row in out.logits])  # p: [n+1, V]
            if rule == "typical":
                verdict = accept_typical(tree.tokens, tree.parents, p, self.rng)
            else:
                q = tree.draft_probs
                if q is None:  # deterministic proposals: one-hot on each node's own token
                    q = np.zeros_like(p)
                    q[np.arange(n), tree.tokens] = 1.0
                verdict = accept_sample(tree.tokens, tree.parents, p, q, self.rng)
        kept = np.array([0, *verdict.accepted], np.int64)
        self.kv.compact(past, kept)
        if self._observe is not None:
            self._observe(self.draft_state, past, out.hidden[kept],
                          None if out.features is None else out.features[kept])
        return verdict.emitted(tree.tokens)
