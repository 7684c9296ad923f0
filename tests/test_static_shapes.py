"""Static-shape graphs (`--shapes static`, the fused export's default) and CUDA graphs per
verify shape (issue 3).

A static graph's bias spans the whole K/V buffer and its length is the input seqlens_k, so a
binding's shapes never change and a CUDA graph captured for one (S, N) can replay every step
of that shape. This CPU cannot capture, but it runs the very same path (static bias, inputs
on the device refilled in place, one graph id per kept shape, runners pooled across
Generators) and must decode exactly as the dynamic graph does."""

import dataclasses
import json
import shutil
import warnings

import numpy as np
import pytest
from conftest import DRAFTER_KINDS, run_to_end

from edgespec.manifest import BundleError
from edgespec.runtime.generator import GenerationParams, Generator
from edgespec.runtime.graph_capture import UNCAPTURED, GraphIds, wants_capture
from edgespec.runtime.model import Model
from edgespec.runtime.providers import SessionConfig, capture_providers
from edgespec.runtime.runner_pool import check_cuda_fit

CAPTURE = SessionConfig(kv_device="device", cuda_graphs="on")
DRAFTERS = ((None, None), ("ngram", None), ("draft_model", 1), ("draft_model", 3), ("mtp", 1),
            ("mtp", 3), ("eagle3", None), ("medusa", None))


@pytest.fixture(scope="session")
def static_pair(tiny_dirs, trained, tmp_path_factory):
    """The tiny llama with every drafter kind, exported dynamic and static (the same weights)."""
    from edgespec.export.pipeline import ExportOptions, export_bundle

    root = tmp_path_factory.mktemp("static")
    out = {}
    for static in (False, True):
        out[static] = root / ("static" if static else "dynamic")
        export_bundle(tiny_dirs["llama"], out[static], ExportOptions(
            max_len=64, progress=False, shapes="static" if static else "dynamic",
            draft_model=tiny_dirs["qwen2"],
            drafters=tuple((k, trained[k][1]) for k in DRAFTER_KINDS)))
    return out


class Recorder:
    """A session that records the gpu_graph_id of every run (and forwards it)."""

    def __init__(self, session):
        self.session, self.ids = session, []

    def io_binding(self):
        return self.session.io_binding()

    def run_with_iobinding(self, io, run_options=None):
        self.ids.append(int(run_options.get_run_config_entry("gpu_graph_id")))
        self.session.run_with_iobinding(io, run_options)


def test_the_static_graph_takes_its_length_as_an_input(static_pair):
    m = json.loads((static_pair[True] / "manifest.json").read_text())
    for spec in (m["target"], *(d["graph"] for d in m["drafters"].values()
                                if d.get("graph") and d["graph"].get("kv"))):
        shapes = {t["name"]: t["shape"] for t in spec["inputs"]}
        assert shapes["attention_bias"] == [1, 1, "S", 64] and shapes["seqlens_k"] == [1]
        assert abs(spec["parity_max_abs"]) < 1e-3  # checked against torch through that path


def test_static_graphs_decode_exactly_as_dynamic_ones(static_pair):
    """Every drafter, greedy, on host K/V, device K/V and the CUDA-graph path; with a rewind
    in the middle (columns a longer step left in the static bias are masked again)."""
    dyn = Model(static_pair[False])
    models = [Model(static_pair[True]), Model(static_pair[True], SessionConfig(kv_device="device")),
              Model(static_pair[True], CAPTURE)]
    params = GenerationParams(max_new_tokens=20, stop_on_eos=False)
    for name, width in DRAFTERS:
        for ids in ([5, 9, 11], [7, 7, 7, 7]):
            want = run_to_end(dyn, params, ids, dyn.drafter(name, tree_width=width))
            for model in models:
                got = run_to_end(model, params, ids, model.drafter(name, tree_width=width))
                assert got.tokens == want.tokens, (name, width)
                assert got.stats.accepted_lengths == want.stats.accepted_lengths
                got.rewind_to(len(got.tokens) - 12)
                got.params = GenerationParams(max_new_tokens=10, stop_on_eos=False)
                while not got.is_done():
                    got.step()
                assert got.tokens == want.tokens[:len(got.tokens)], (name, width, "rewind")
                got.close()


def test_each_kept_shape_replays_its_own_graph_over_its_own_buffers(static_pair):
    model = Model(static_pair[True], CAPTURE)
    rec = model.runners.session = Recorder(model.runners.session)
    params = GenerationParams(max_new_tokens=16, stop_on_eos=False)
    prompt = list(range(3, 3 + 40))  # 40 tokens: prefilled in one 39-token chunk
    gen = run_to_end(model, params, prompt, model.drafter("ngram"))
    runner, tokens = gen.runner, gen.tokens
    ids = {key: int(b.run_options.get_run_config_entry("gpu_graph_id"))
           for key, b in runner.captured.items()}
    assert (39, 1) in ids  # the prefill chunk: short enough to keep
    assert len(set(ids.values())) == len(ids) and UNCAPTURED not in ids.values()
    assert set(rec.ids) <= set(ids.values())  # every run named its shape's graph
    gen.close()
    # the next Generator gets the closed one's runner: the same graphs over the same buffers
    again = run_to_end(model, params, prompt, model.drafter("ngram"))
    assert again.runner is runner and again.tokens == tokens
    assert {k: int(b.run_options.get_run_config_entry("gpu_graph_id"))
            for k, b in runner.captured.items()} == ids
    # a second Generator alive at once gets buffers (and graph ids) of its own
    other = Generator(model, params, model.drafter("ngram"))
    other.append_tokens(prompt)
    other.step()
    assert other.runner is not runner
    theirs = {int(b.run_options.get_run_config_entry("gpu_graph_id"))
              for b in other.runner.captured.values()}
    assert theirs and not theirs & set(ids.values())
    assert model.graph_ids.used == len(ids) + len(theirs)


def test_past_the_budget_and_for_long_prefills_shapes_run_uncaptured(static_pair,
                                                                    monkeypatch):
    from edgespec.runtime.graph_runner import GraphRunner

    monkeypatch.setattr(GraphRunner, "MAX_KEPT_S", 32)  # a longer prefill chunk: no graph
    model = Model(static_pair[True], CAPTURE)
    model.runners.graph_ids = GraphIds(budget=1)
    rec = model.runners.session = Recorder(model.runners.session)
    params = GenerationParams(max_new_tokens=12, stop_on_eos=False)
    prompt = [5, 6, 7, 8] * 12 + [5, 6]  # 50 tokens; repeats: ngram proposes, verify shapes
    gen = run_to_end(model, params, prompt, model.drafter("ngram"))
    assert rec.ids[0] == UNCAPTURED  # the 49-token prefill chunk
    assert len(gen.runner.captured) == 1 and model.graph_ids.used == 1  # budget: 1 graph
    assert rec.ids[1] == 1 and set(rec.ids) == {UNCAPTURED, 1}
    # the other shapes that ran are kept uncaptured (least recently used go first)
    assert gen.runner._bindings and UNCAPTURED in rec.ids[2:]
    want = run_to_end(Model(static_pair[False]), params, prompt,
                      Model(static_pair[False]).drafter("ngram"))
    assert gen.tokens == want.tokens


def test_cuda_graphs_on_needs_a_static_graph_and_device_kv(static_pair):
    with pytest.raises(ValueError, match="--shapes static"):
        Model(static_pair[False], CAPTURE)
    with pytest.raises(ValueError, match="K/V on the device"):
        Model(static_pair[True], SessionConfig(kv_device="host", cuda_graphs="on"))
    with pytest.raises(ValueError, match="cuda_graphs must be"):
        SessionConfig(cuda_graphs="yes")
    # auto: on the cuda preset only; the CPU decodes without graph ids, TensorRT's own capture
    # is opt-in ("on")
    model = Model(static_pair[True])
    assert model.graph_ids is None
    static, dynamic = model.manifest.target, Model(static_pair[False]).manifest.target
    # what CUDA's GroupQueryAttention runs: float16, no attention bias (--verify chain)
    gpu = dataclasses.replace(static, kv=dataclasses.replace(static.kv, dtype="float16"),
                              inputs=tuple(t for t in static.inputs
                                           if t.name != "attention_bias"))
    cuda = SessionConfig(provider="cuda")
    assert wants_capture(cuda, gpu, True)
    assert not wants_capture(cuda, static, True)  # float32, with a bias: attention not on CUDA
    assert not wants_capture(cuda, dynamic, True)
    assert not wants_capture(cuda, gpu, False)
    assert not wants_capture(SessionConfig(provider="tensorrt"), gpu, True)
    assert wants_capture(SessionConfig(provider="tensorrt", cuda_graphs="on"), gpu, True)
    assert not wants_capture(SessionConfig(provider="cuda", cuda_graphs="off"), gpu, True)
    # on the GPU presets a graph with a bias is refused, a float32 one warned about
    with pytest.raises(BundleError, match="--verify chain"):
        check_cuda_fit(static, cuda)
    chain32 = dataclasses.replace(gpu, kv=static.kv)
    with pytest.warns(RuntimeWarning, match="--weights fp16"):
        check_cuda_fit(chain32, cuda)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_cuda_fit(gpu, cuda)
        check_cuda_fit(static, SessionConfig())  # the CPU runs every graph


def test_capture_turns_on_the_gpu_providers_option_only():
    cuda = [("CUDAExecutionProvider", {"device_id": "0"}), "CPUExecutionProvider"]
    assert capture_providers(cuda)[0] == ("CUDAExecutionProvider",
                                          {"device_id": "0", "enable_cuda_graph": "1"})
    trt = [("TensorrtExecutionProvider", {}), ("CUDAExecutionProvider", {})]
    assert capture_providers(trt)[0][1] == {"trt_cuda_graph_enable": "1"}
    assert capture_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_a_static_bias_that_does_not_span_the_buffer_is_refused(static_pair, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(static_pair[True], bundle)
    path = bundle / "manifest.json"
    m = json.loads(path.read_text())
    for t in m["target"]["inputs"]:
        if t["name"] == "attention_bias":
            t["shape"] = [1, 1, "S", "P+S"]
    path.write_text(json.dumps(m))
    with pytest.raises(BundleError, match="attention_bias"):
        Model(bundle)


def test_static_shapes_need_the_fused_graph(tiny_dirs, tmp_path):
    from edgespec.export.pipeline import ExportOptions, export_bundle

    with pytest.raises(ValueError, match="--shapes static builds the fused graph only"):
        export_bundle(tiny_dirs["llama"], tmp_path / "b",
                      ExportOptions(max_len=64, graph="plain", shapes="static",
                                    progress=False))
    assert not (tmp_path / "b").exists()
    # the defaults: static for the fused graph, dynamic for the plain one
    assert ExportOptions().variant.static and not ExportOptions(graph="plain").variant.static


def test_static_bias_rows_match_the_dynamic_bias(static_pair):
    """What the runner binds: the step's [S, P+S] bias, then the mask up to L."""
    model = Model(static_pair[True])
    gen = Generator(model, GenerationParams(max_new_tokens=4, stop_on_eos=False))
    gen.append_tokens([5, 9, 11, 13])
    gen.step()
    binding = gen.runner.captured.get((1, 1)) or gen.runner._bindings[(1, 1)]
    rows = binding.bufs["attention_bias"][0, 0]
    end = binding.static.end
    assert end == gen.kv.length and binding.bufs["seqlens_k"][0] == end - 1
    assert np.all(rows[:, :end] == 0) and np.all(rows[:, end:] == model.manifest.target.mask_value)


def test_drafter_runners_capture_and_are_pooled_too(static_pair):
    """A drafter with its own K/V (draft model, mtp, eagle3) runs its small forwards as
    captured graphs as well; its runner goes back to its pool on close() or when the
    Generator is collected, and the next Generator replays over the same buffers."""
    import gc

    model = Model(static_pair[True], CAPTURE)
    params = GenerationParams(max_new_tokens=12, stop_on_eos=False)
    for name in ("draft_model", "mtp", "eagle3"):
        drafter = model.drafter(name)
        gen = run_to_end(model, params, [5, 9, 11, 5, 9], drafter)
        runner = gen.draft_state.runner
        ids = {int(b.run_options.get_run_config_entry("gpu_graph_id"))
               for b in runner.captured.values()}
        assert ids and UNCAPTURED not in ids and runner.graph_ids is drafter.runners.graph_ids
        gen.close()
        assert drafter.runners.idle == 1
        again = Generator(model, params, drafter)
        assert again.draft_state.runner is runner and runner.kv.length == 0
        assert drafter.runners.idle == 0
        del again  # never closed: collected, its runners still go back
        gc.collect()
        assert drafter.runners.idle == 1, name


def test_the_static_bias_is_always_the_step_bias_then_masked(static_pair):
    """Random steps on one runner (causal ones filled incrementally, explicit tree biases
    copied whole, lengths moving back and forth as rewinds do): every [S, L] bias equals the
    step's [S, P+S] bias followed by the mask."""
    from edgespec.masks import causal_bias

    model = Model(static_pair[True])
    runner = model.new_runner()
    mask, length = model.manifest.target.mask_value, model.max_len
    rng = np.random.default_rng(0)
    for _ in range(300):
        s = int(rng.choice([1, 3]))
        p = int(rng.integers(0, length - s))
        runner.kv.length = p
        binding = runner._binding(s, s)
        want = causal_bias(p, s, mask)[0, 0]
        if rng.random() < 0.3:  # a tree (or window) bias: some past and new columns masked
            want = np.where(rng.random(want.shape) < 0.3, np.float32(mask), want)
            binding.static.fill(want[None, None], p, s)
        else:
            binding.static.fill(None, p, s)
        rows = binding.bufs["attention_bias"][0, 0]
        np.testing.assert_array_equal(rows[:, :p + s], want)
        assert np.all(rows[:, p + s:] == mask) and binding.bufs["seqlens_k"][0] == p + s - 1


def _gpu_export(tiny_dirs, trained, tmp_path_factory, verify: str):
    from edgespec.export.pipeline import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp(verify) / "b"
    export_bundle(tiny_dirs["llama"], out, ExportOptions(
        max_len=64, progress=False, verify=verify, draft_model=tiny_dirs["qwen2"],
        drafters=tuple((k, trained[k][1]) for k in DRAFTER_KINDS)))
    return out


@pytest.fixture(scope="session")
def chain_bundle(tiny_dirs, trained, tmp_path_factory):
    """The tiny llama with every drafter kind, exported with --verify chain: no graph takes an
    attention bias (onnxruntime's CUDA GroupQueryAttention refuses one)."""
    return _gpu_export(tiny_dirs, trained, tmp_path_factory, "chain")


@pytest.fixture(scope="session")
def tree_gpu_bundle(tiny_dirs, trained, tmp_path_factory):
    """The same with --verify tree-gpu: GQA only writes K/V, MatMul + Softmax attend under the
    bias (trees on CUDA)."""
    return _gpu_export(tiny_dirs, trained, tmp_path_factory, "tree-gpu")


def test_tree_gpu_graphs_verify_trees_without_a_gqa_bias(tree_gpu_bundle, static_pair):
    """GroupQueryAttention gets no bias (what CUDA runs), yet every drafter drafts and verifies
    its trees exactly as the GQA-bias bundle does, on host K/V and the CUDA-graph path (whose
    device K/V buffers start zeroed: this graph reads every row)."""
    import onnx

    m = Model(tree_gpu_bundle).manifest
    for spec in (m.target, *(d.graph for d in m.drafters.values() if d.graph and d.graph.kv)):
        assert spec.attention == "matmul" and "attention_bias" in {t.name for t in spec.inputs}
        gqa = [n for n in onnx.load(str(tree_gpu_bundle / spec.file)).graph.node
               if n.op_type == "GroupQueryAttention"]
        assert gqa and all(len(n.input) == 10 for n in gqa)
        assert spec.parity_max_abs < 1e-3  # vs torch on a tree-masked verify step
    gpu = dataclasses.replace(m.target, kv=dataclasses.replace(m.target.kv, dtype="float16"))
    check_cuda_fit(gpu, SessionConfig(provider="cuda"))  # no refusal: CUDA can run it
    assert wants_capture(SessionConfig(provider="cuda"), gpu, True)
    trees = Model(static_pair[True])
    params = GenerationParams(max_new_tokens=20, stop_on_eos=False)
    for config in (SessionConfig(), CAPTURE):
        model = Model(tree_gpu_bundle, config)
        assert model.verifies_trees
        for name, width in DRAFTERS:
            for ids in ([5, 9, 11], [7, 7, 7, 7]):
                want = run_to_end(trees, params, ids, trees.drafter(name, tree_width=width))
                got = run_to_end(model, params, ids, model.drafter(name, tree_width=width))
                assert got.tokens == want.tokens, (name, width)
                assert got.stats.accepted_lengths == want.stats.accepted_lengths


def test_a_chain_bundle_has_no_attention_bias_and_drafts_chains(chain_bundle, static_pair):
    """Every drafter of a chain bundle drafts a chain (Medusa its top-1 path, the dynamic
    trees width 1) and decodes exactly what the tree bundle's autoregressive decoding gives,
    on host K/V and on the CUDA-graph path."""
    import onnx

    model = Model(chain_bundle)
    assert not model.verifies_trees and Model(static_pair[True]).verifies_trees
    m = model.manifest
    for spec in (m.target, *(d.graph for d in m.drafters.values() if d.graph and d.graph.kv)):
        assert "attention_bias" not in {t.name for t in spec.inputs}
        gqa = [n for n in onnx.load(str(chain_bundle / spec.file)).graph.node
               if n.op_type == "GroupQueryAttention"]
        assert gqa and all(len(n.input) == 10 for n in gqa)  # up to position_ids: no bias
        assert spec.parity_max_abs < 1e-3  # parity vs torch on a chain verify step
    trees = Model(static_pair[True])
    params = GenerationParams(max_new_tokens=20, stop_on_eos=False)
    for config in (SessionConfig(), CAPTURE):
        chain = Model(chain_bundle, config)
        accepted = 0
        for name, width in DRAFTERS:
            for ids in ([5, 9, 11], [7, 7, 7, 7]):
                want = run_to_end(trees, params, ids).tokens
                gen = run_to_end(chain, params, ids, chain.drafter(name, tree_width=width))
                assert gen.tokens == want, (name, width)
                accepted += max(gen.stats.accepted_lengths) > 1
        assert accepted > 4  # drafts were accepted: the chains were verified, not skipped
        medusa = chain.drafter("medusa")
        assert list(medusa.parents) == list(range(-1, len(medusa.parents) - 1))  # a chain
        assert chain.drafter("eagle3", tree_width=4).tree_width == 1


def test_a_chain_graph_refuses_a_tree(chain_bundle):
    from edgespec.tree import tree_bias

    model = Model(chain_bundle)
    runner = model.new_runner()
    mask = model.manifest.target.mask_value
    runner.forward(np.array([5, 9, 11]), np.arange(3), None, np.array([2]))
    parents = np.array([-1, 0, 0])  # two siblings: not a chain
    with pytest.raises(ValueError, match="verifies chains only"):
        runner.forward(np.array([1, 2, 3]), np.array([3, 4, 4]), tree_bias(parents, 3, mask),
                       np.arange(3))


def test_chain_exports_are_refused_where_they_cannot_work(tiny_dirs, tmp_path):
    from edgespec.export.pipeline import ExportOptions, export_bundle

    for opts, match in ((dict(graph="plain"), "--verify chain builds fused graphs with static"),
                        (dict(shapes="dynamic"), "--verify chain builds fused graphs with static"),
                        (dict(verify="both"), "--verify 'both' is not one of")):
        with pytest.raises(ValueError, match=match):
            export_bundle(tiny_dirs["llama"], tmp_path / "b", ExportOptions(
                max_len=64, progress=False, **{"verify": "chain", **opts}))
    # a sliding window no longer is a reason: the chain graph carries it (test_windows_moe.py)
    assert not (tmp_path / "b").exists()


def test_tree_tuning_of_a_chain_bundle_is_one_clear_error(chain_bundle, tmp_path, capsys):
    from edgespec.cli import main

    pfile = tmp_path / "p.jsonl"
    pfile.write_text(json.dumps({"id": 0, "prompt": "t5 t6"}) + "\n")
    assert main(["tune", str(chain_bundle), "--drafter", "medusa", "--prompts",
                 str(pfile)]) == 2
    err = capsys.readouterr().err
    assert "verifies chains only" in err and err.count("\n") == 1


def test_an_unknown_or_dynamic_matmul_attention_is_refused(static_pair, tmp_path):
    for source, value, match in ((static_pair[True], "flash", "is not gqa or matmul"),
                                 (static_pair[False], "matmul", "needs static shapes")):
        bundle = tmp_path / value
        shutil.copytree(source, bundle)
        path = bundle / "manifest.json"
        m = json.loads(path.read_text())
        m["target"]["attention"] = value
        path.write_text(json.dumps(m))
        with pytest.raises(BundleError, match=match):
            Model(bundle)
