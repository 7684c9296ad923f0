"""K/V buffers on the execution device (issue 3): allocated by onnxruntime, written in place by
the fused graph, tree rows compacted in place by the bundle's compaction graph. On this CPU the
device is the CPU, which runs the very code path a GPU runs (OrtValues, IO binding, the
compaction session) and must decode exactly as host buffers do."""

import numpy as np
import pytest
from conftest import run_to_end

from edgespec.export.kv_compact import build_compactor
from edgespec.manifest import BundleError, ModelInfo
from edgespec.runtime.device_kv import DeviceKVCache
from edgespec.runtime.generator import GenerationParams
from edgespec.runtime.kv import KVCache
from edgespec.runtime.model import Model
from edgespec.runtime.providers import SessionConfig


def test_device_compaction_moves_the_same_rows_as_the_host():
    import onnxruntime as ort

    info = ModelInfo("llama", 100, 16, 2, 2, 2, 4, 32, "float32")
    session = ort.InferenceSession(build_compactor(4, 2, 4).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    host, dev = KVCache(2, 2, 4, 32), DeviceKVCache(info, "cpu", session)
    rng = np.random.default_rng(0)
    for h, d in zip((*host.keys, *host.values), (*dev.keys, *dev.values)):
        h[:] = rng.standard_normal(h.shape)
        d.update_inplace(h)
    for start, length, keep in ((5, 12, [0, 2, 5]), (3, 9, [0, 1, 2]), (10, 20, [1, 4, 9])):
        host.length = dev.length = length
        host.compact(start, np.array(keep))
        dev.compact(start, np.array(keep))
        assert dev.length == host.length == start + len(keep)
        for h, d in zip((*host.keys, *host.values), (*dev.keys, *dev.values)):
            np.testing.assert_array_equal(d.numpy(), h)


def test_device_kv_decodes_exactly_like_host_kv(trimmed_bundle):
    host = Model(trimmed_bundle)
    dev = Model(trimmed_bundle, SessionConfig(kv_device="device"))
    assert dev.manifest.target.kv.compact == "target.kv_compact.onnx"
    runs = []

    class Counting:  # the target's compaction session, counted: trees must exercise it
        def __init__(self, session):
            self.session = session

        def io_binding(self):
            return self.session.io_binding()

        def run_with_iobinding(self, io):
            runs.append(1)
            self.session.run_with_iobinding(io)

    dev.runners.new_kv.compactor = Counting(dev.runners.new_kv.compactor)
    params = GenerationParams(max_new_tokens=24, stop_on_eos=False)
    for name, width in ((None, None), ("ngram", None), ("draft_model", 1), ("draft_model", 3),
                        ("mtp", 1), ("mtp", 3), ("eagle3", None), ("medusa", None)):
        for ids in ([5, 9, 11], [7, 7, 7, 7]):
            a = run_to_end(host, params, ids, host.drafter(name, tree_width=width))
            b = run_to_end(dev, params, ids, dev.drafter(name, tree_width=width))
            assert b.kv.on_device and a.tokens == b.tokens, (name, width)
            assert b.stats.accepted_lengths == a.stats.accepted_lengths
    assert len(runs) > 5  # accepted tree paths that were not a prefix were moved on the device


def test_device_kv_needs_the_fused_graph(tiny_bundles):
    plain = tiny_bundles[("llama", "plain")][1]
    with pytest.raises(BundleError, match="needs the fused graph"):
        Model(plain, SessionConfig(kv_device="device"))
    assert not Model(plain).new_runner().kv.on_device  # auto on a CPU: host buffers


def test_a_compaction_graph_for_other_dims_is_refused(trimmed_bundle, tmp_path):
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(trimmed_bundle, bundle)
    (bundle / "target.kv_compact.onnx").write_bytes(
        build_compactor(2, 2, 4).SerializeToString())  # one layer's buffers, not two
    with pytest.raises(BundleError, match="not a K/V compaction graph for 2 layers"):
        Model(bundle, SessionConfig(kv_device="device"))


def test_greedy_decoding_on_device_kv_leaves_the_logits_there(trimmed_bundle, monkeypatch):
    """With K/V on the device the target's logits are bound there too: greedy decoding and
    greedy verification read the graph's argmax (N ints) and never copy [N, V] to the host;
    sampling still gets its logits, and both decode as host buffers do."""
    import onnxruntime as ort

    host = Model(trimmed_bundle)
    dev = Model(trimmed_bundle, SessionConfig(kv_device="device"))
    fetched = []
    real = ort.OrtValue.numpy

    def counting(value):
        fetched.append(value.shape())
        return real(value)

    monkeypatch.setattr(ort.OrtValue, "numpy", counting)
    greedy = GenerationParams(max_new_tokens=24, stop_on_eos=False)
    vocab = dev.manifest.model.vocab_size
    for name in (None, "ngram"):
        b = run_to_end(dev, greedy, [5, 9, 11], dev.drafter(name))
        assert b.runner.device_logits and not [s for s in fetched if s[-1] == vocab]
        assert b.tokens == run_to_end(host, greedy, [5, 9, 11], host.drafter(name)).tokens
    sampled = GenerationParams(max_new_tokens=16, stop_on_eos=False, seed=3,
                               sampling=greedy.sampling.__class__(temperature=0.8))
    a = run_to_end(host, sampled, [5, 9, 11], host.drafter("ngram"))
    b = run_to_end(dev, sampled, [5, 9, 11], dev.drafter("ngram"))
    assert a.tokens == b.tokens and [s for s in fetched if s[-1] == vocab]  # fetched to sample


def test_device_kv_binds_every_refilled_input_as_a_device_buffer(trimmed_bundle):
    """onnxruntime's IO binding copies a host input to the device when it is bound, so an
    input the runner refills in place every forward must be a device buffer of its own: on an
    H200 the bound host arrays decoded the first steps' stale inputs (wrong greedy output,
    CUDA graphs off). Here the device is the CPU, where a host array would have worked."""
    import onnxruntime as ort

    dev = Model(trimmed_bundle, SessionConfig(kv_device="device"))
    runner = dev.new_runner()
    kv_inputs = {past for past, _, _ in runner._kv_bound}
    for s, n in ((1, 1), (4, 4), (3, 1)):
        binding = runner._binding(s, n)
        refilled = {t.name for t in runner.spec.inputs} - kv_inputs - set(runner.extra_widths)
        assert set(binding.device_in) == refilled
        assert all(isinstance(v, ort.OrtValue) for v in binding.device_in.values())
    dev.release_runner(runner)
