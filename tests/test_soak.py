"""Short soak (benchmarks/soak.py runs the long one): every drafter of the demo bundle decodes the
same prompts again and again, alternating a fresh and a long-lived Generator, with output
identical to autoregressive greedy decoding and flat resident memory after a warm-up pass."""

import mmap

import pytest

from edgespec.devices.soak import current_rss_mb, reference_outputs, soak
from edgespec.runtime.model import Model

MAX_NEW = 40
TOKENS = 480  # counted per drafter, after a warm-up of 6 outputs (~720 tokens in all, ~5 s)
EVERY = 120
# Measured on the demo bundle (Linux, glibc, 3 prompts): after the warm-up RSS rises 0-2 MB,
# once, within the first few samples (glibc's adaptive mmap threshold moves freed KV buffers
# onto the heap; MALLOC_MMAP_THRESHOLD_=65536 removes most of it), then stays flat. A leak of
# one fresh Generator's buffers per output (>= 3 MB each, 12 outputs) fails; so did the
# LayerDrafter that bound [S, V] logits per catch-up shape (mtp +11.9 MB, eagle3 +12.6 MB).
# Absolute MB, not %: pytest's RSS includes torch (from the export), which would dilute a %.
SETTLE_MB = 6.0  # largest sample over the first
FLAT_MB = 2.0  # second half of the samples: the settled phase must not creep (measured <= 1)


@pytest.fixture(scope="module")
def soak_setup(demo_bundle, prompts):
    model = Model(demo_bundle)
    ids = [model.tokenizer.encode(r["prompt"]) for r in prompts[:3]]
    return model, ids, reference_outputs(model, ids, MAX_NEW)


def test_current_rss_is_live_memory():
    # an anonymous mapping of our own, not a bytearray: whether malloc hands a large block
    # back to the OS on free depends on its thresholds, which earlier tests' libraries move
    before = current_rss_mb()
    block = mmap.mmap(-1, 64 * 2**20)  # zero pages: touch them so they are resident
    block[::4096] = b"\x01" * len(block[::4096])
    assert current_rss_mb() - before > 48
    block.close()
    assert current_rss_mb() - before < 16  # unmapped: unlike ru_maxrss, it goes down


@pytest.mark.parametrize("name", ["none", "ngram", "medusa", "mtp", "eagle3", "draft_model"])
def test_soak_is_lossless_and_flat(soak_setup, name):
    model, ids, refs = soak_setup
    assert name == "none" or name in model.manifest.drafters  # the demo carries every kind
    r = soak(model, name, ids, refs, TOKENS, EVERY, MAX_NEW)
    assert r.mismatches == []
    assert r.outputs >= 2 * len(ids) + TOKENS // MAX_NEW  # warm-up both ways + counted outputs
    assert r.tokens >= TOKENS and len(r.samples) >= TOKENS // EVERY + 1
    if name != "none":
        assert r.tau > 1.1  # the drafter ran and its tokens were accepted (ngram: 1.3+)
    rss = r.rss
    assert max(rss) - rss[0] < SETTLE_MB, r.samples  # the largest bounds the last too
    half = rss[len(rss) // 2:]
    assert max(half) - half[0] < FLAT_MB, r.samples
