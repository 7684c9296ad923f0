"""Concurrent use from an app (issue 8): generators in several threads share one loaded bundle
(sessions and drafters shared, KV state per generator) and produce what they produce alone;
a generation cancelled from another thread stops within one step and frees its buffers."""

import gc
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

from conftest import run_to_end

from edgespec.runtime.completions import CompletionStream
from edgespec.runtime.generator import GenerationParams, Generator
from edgespec.runtime.model import Model
from edgespec.sampling import SamplingParams

DRAFTERS = (None, "ngram", "draft_model", "mtp", "eagle3", "medusa")
PROMPTS = ([5, 9, 11], [7], [20, 21, 22, 23, 24, 25], [3, 3, 3, 3])


def _jobs():
    greedy = GenerationParams(max_new_tokens=30, stop_on_eos=False)
    sampled = GenerationParams(max_new_tokens=30, stop_on_eos=False, seed=11,
                               sampling=SamplingParams(temperature=0.9, top_k=40))
    return [(d, p, params) for d in DRAFTERS for p in PROMPTS for params in (greedy, sampled)]


def test_generators_in_threads_match_sequential_runs(trimmed_bundle):
    model = Model(trimmed_bundle)
    jobs = _jobs()

    def run(job):
        name, prompt, params = job
        return run_to_end(model, params, prompt, model.drafter(name)).tokens

    alone = [run(job) for job in jobs]
    start = threading.Barrier(6)

    def run_together(job):
        start.wait(timeout=60) if jobs.index(job) < 6 else None  # the first six start at once
        return run(job)

    for _ in range(2):  # twice: interleavings differ from run to run
        with ThreadPoolExecutor(max_workers=6) as pool:
            together = list(pool.map(run_together, jobs))
        assert together == alone
    assert len(jobs) == 48


def test_threads_sharing_the_demo_bundle(demo_bundle, prompts):
    """The same on the real demo target with its trained drafters, four threads at once."""
    model = Model(demo_bundle)
    params = GenerationParams(max_new_tokens=48)
    jobs = [(name, model.tokenizer.encode(row["prompt"]))
            for name, row in zip(("mtp", "eagle3", "medusa", "draft_model", None, "ngram",
                                  "mtp", "eagle3"), prompts[:8] * 2)]

    def run(job):
        return run_to_end(model, params, job[1], model.drafter(job[0])).tokens

    alone = [run(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(run, jobs)) == alone


def test_cancel_from_another_thread_stops_within_one_step_and_frees_buffers(demo_bundle):
    model = Model(demo_bundle)
    cancel = threading.Event()
    gen = Generator(model, GenerationParams(max_new_tokens=400, stop_on_eos=False),
                    model.drafter("mtp"), cancel=cancel)
    gen.append_tokens(model.tokenizer.encode("def main():\n"))
    kv_buffer = weakref.ref(gen.kv.keys[0])
    draft_kv = weakref.ref(gen.draft_state.runner.kv.keys[0])
    log, two_steps = [], threading.Event()

    def worker():
        while not gen.is_done():
            cancelled_before = cancel.is_set()
            log.append((cancelled_before, len(gen.step())))
            if len(log) == 2:
                two_steps.set()

    thread = threading.Thread(target=worker)
    thread.start()
    assert two_steps.wait(timeout=60)
    cancel.set()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert gen.stop_reason == "cancelled" and len(gen.new_tokens) < 400
    # no step that started after the cancel produced a token (the one in flight may finish)
    assert all(n == 0 for before, n in log if before)
    gc.collect()
    assert kv_buffer() is None and draft_kv() is None  # target and drafter K/V released


def test_cancelled_stream_ends_early_with_a_prefix_of_the_full_text(demo_bundle):
    model = Model(demo_bundle)
    params = GenerationParams(max_new_tokens=300, stop_on_eos=False)
    prompt = "class Queue:\n"
    full = "".join(CompletionStream(model, prompt, params, "eagle3"))
    cancelled, pieces, first = CompletionStream(model, prompt, params, "eagle3"), [], \
        threading.Event()

    def consume():
        for piece in cancelled:
            pieces.append(piece)
            first.set()

    thread = threading.Thread(target=consume)
    thread.start()
    assert first.wait(timeout=60)
    cancelled.cancel()
    thread.join(timeout=60)
    text = "".join(pieces)
    assert not thread.is_alive() and full.startswith(text) and len(text) < len(full)
    assert cancelled.completion.stop_reason == "cancelled"


def test_a_closed_generator_refuses_further_use(trimmed_bundle):
    model = Model(trimmed_bundle)
    with Generator(model, GenerationParams(max_new_tokens=4)) as gen:
        gen.append_tokens([5, 9])
        gen.step()
    assert gen.kv is None and gen.stop_reason == "closed" and gen.is_done()
    for call in (gen.step, lambda: gen.append_tokens([3]), lambda: gen.rewind_to(0)):
        try:
            call()
        except RuntimeError as e:
            assert "create a new Generator" in str(e)
        else:
            raise AssertionError("a closed generator was used")
