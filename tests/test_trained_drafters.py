"""Trained drafters (issue 5): training smoke per kind on a tiny config, export parity, and
greedy speculative output equal to greedy autoregressive output for each drafter."""

import numpy as np
import pytest
import torch
from conftest import run_to_end

from edgespec.export.pipeline import ExportOptions, export_bundle
from edgespec.manifest import BundleError
from edgespec.export.train.distill import generate_data
from edgespec.models.drafters import DrafterConfig, load_drafter
from edgespec.export.train.trainer import TrainConfig, greedy_tree, unroll_bias
from edgespec.models.weights import load_transformer, weights_fingerprint
from edgespec.runtime.generator import GenerationParams, Generator
from edgespec.runtime.model import Model

KINDS = ("medusa", "mtp", "eagle3", "block")


@pytest.fixture(scope="module")
def drafter_bundle(tiny_dirs, trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("dbundle") / "b"
    export_bundle(tiny_dirs["llama"], out, ExportOptions(
        max_len=64, progress=False, drafters=tuple((k, trained[k][1]) for k in KINDS)))
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_training_lowers_the_loss_and_reloads(kind, trained, tiny_dirs):
    report, folder = trained[kind]
    assert report["loss_last"] < report["loss_first"]
    assert 1.0 <= report["heldout_chain_tau"]
    m = load_drafter(folder, load_transformer(tiny_dirs["llama"]))
    assert m.cfg.kind == kind and m.cfg.options["training"]["steps"] == 40


def test_export_lists_each_drafter_with_parity(drafter_bundle):
    m = Model(drafter_bundle)
    for kind in KINDS:
        spec = m.manifest.drafters[kind]
        assert spec.kind == kind and spec.graph.parity_max_abs <= 1e-3
    assert len(m.manifest.drafters["medusa"].options["tree"]) > 4


@pytest.mark.parametrize("name,width", [("medusa", None), ("mtp", 1), ("eagle3", 1),
                                        ("eagle3", 3), ("mtp", 2), ("block", None)])
def test_greedy_speculative_equals_autoregressive(drafter_bundle, name, width):
    model = Model(drafter_bundle)
    drafter = model.drafter(name, tree_width=width)
    params = GenerationParams(max_new_tokens=30, stop_on_eos=False)
    rng = np.random.default_rng(1)
    forwards = 0
    for _ in range(4):
        prompt = rng.integers(3, 300, int(rng.integers(1, 9))).tolist()
        ref = run_to_end(model, params, prompt)
        gen = run_to_end(model, params, prompt, drafter)
        assert gen.tokens == ref.tokens
        # a rewind mid-way must leave the drafter's cached rows consistent
        gen.rewind_to(len(gen.tokens) - 7)
        while not gen.is_done():
            gen.step()
        assert gen.tokens == ref.tokens
        forwards += gen.stats.target_forwards
    assert forwards > 0


def test_a_drafter_for_another_target_is_refused(tiny_dirs, trained, tmp_path):
    with pytest.raises(ValueError, match="another target"):
        export_bundle(tiny_dirs["llama3_rope_tied"], tmp_path / "x", ExportOptions(
            max_len=64, progress=False, drafters=(("mtp", trained["mtp"][1]),)))
    with pytest.raises(ValueError, match="feature-layers"):
        export_bundle(tiny_dirs["llama"], tmp_path / "y", ExportOptions(
            max_len=64, progress=False, feature_layers=(1,),
            drafters=(("eagle3", trained["eagle3"][1]),)))


def test_export_exposes_the_layers_its_eagle3_drafter_reads(tiny_dirs, trained, tmp_path,
                                                           monkeypatch):
    from edgespec.export import pipeline

    layers = DrafterConfig.load(trained["eagle3"][1]).feature_layers
    monkeypatch.setattr(pipeline, "default_feature_layers", lambda n: (n - 1,))
    m = export_bundle(tiny_dirs["llama"], tmp_path / "b", ExportOptions(
        max_len=64, progress=False, drafters=(("eagle3", trained["eagle3"][1]),)))
    assert tuple(m.target.feature_layers) == tuple(layers) != (1,)
    m = export_bundle(tiny_dirs["llama"], tmp_path / "c", ExportOptions(max_len=64,
                                                                        progress=False))
    assert tuple(m.target.feature_layers) == (1,)  # no eagle3 drafter: the default


def test_manifest_refuses_a_drafter_fit_to_another_target(drafter_bundle, tmp_path):
    import json
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(drafter_bundle, bad)
    man = json.loads((bad / "manifest.json").read_text())
    man["drafters"]["mtp"]["options"]["target_fingerprint"] = "0" * 64
    (bad / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BundleError, match="another target"):
        Model(bad)


def test_unroll_bias_is_what_a_draft_at_that_depth_sees():
    b = unroll_bias(5, 2)[0, 0] == 0  # [5, 15]: step-0, step-1, step-2 keys
    r = 4  # chain rooted at row 2: step-0 keys 0..2, step-1 key 3, step-2 key 4 (itself)
    assert b[r, :5].tolist() == [True, True, True, False, False]
    assert b[r, 5:10].tolist() == [False, False, False, True, False]
    assert b[r, 10:].tolist() == [False, False, False, False, True]
    assert torch.equal(unroll_bias(4, 0)[0, 0] == 0, torch.ones(4, 4).tril().bool())


def test_greedy_tree_grows_best_paths_first():
    acc = np.array([[0.6, 0.2, 0.1], [0.5, 0.1, 0.05]])
    tree = greedy_tree(acc, 4)
    assert tree == [[0], [0, 0], [1], [0, 1]] or tree[:2] == [[0], [0, 0]]
    for i, p in enumerate(tree):  # every prefix is a tree: parents come first
        assert len(p) == 1 or p[:-1] in tree[:i]


def test_medusa2_trains_backbone_and_heads_and_exports(tiny_dirs, tiny_bundles, trained,
                                                       tmp_path):
    from edgespec.export.train.medusa2 import train_medusa2

    hf = tiny_dirs["llama"]
    target = load_transformer(hf)
    heads = load_drafter(trained["medusa"][1], target)
    model = Model(tiny_bundles["llama"][1])
    rng = np.random.default_rng(2)
    data = generate_data(model, [rng.integers(3, 300, 6).tolist() for _ in range(12)], 16)
    r = train_medusa2(heads.cfg, target, hf, data, tmp_path / "m2",
                      TrainConfig(steps=30, batch=4, lr=5e-3, warmup=2, progress=False), heads)
    assert r["loss_last"] < r["loss_first"]
    assert abs(r["heldout_nll_drift"]) < 0.5  # tiny random model: only that it is measured
    new_target = tmp_path / "m2" / "target"
    assert weights_fingerprint(new_target) != weights_fingerprint(hf)
    out = tmp_path / "bundle"
    export_bundle(new_target, out, ExportOptions(max_len=64, progress=False,
                                                 drafters=(("medusa", tmp_path / "m2"),)))
    m = Model(out)
    gen = Generator(m, GenerationParams(max_new_tokens=12, stop_on_eos=False), m.drafter("medusa"))
    ref = Generator(m, GenerationParams(max_new_tokens=12, stop_on_eos=False))
    for g in (gen, ref):
        g.append_tokens([5, 6, 7])
        while not g.is_done():
            g.step()
    assert gen.tokens == ref.tokens


@pytest.mark.parametrize("accept", ["sample", "typical"])
def test_sampling_with_each_trained_drafter_runs_and_is_seeded(drafter_bundle, accept):
    from edgespec.sampling import SamplingParams

    model = Model(drafter_bundle)
    params = GenerationParams(max_new_tokens=20, stop_on_eos=False, seed=3, accept=accept,
                              sampling=SamplingParams(temperature=0.8))
    for name in KINDS:
        outs = []
        for _ in range(2):
            gen = Generator(model, params, model.drafter(name))
            gen.append_tokens([4, 9, 16])
            while not gen.is_done():
                gen.step()
            outs.append(gen.new_tokens)
        assert len(outs[0]) == 20 and all(0 <= t < 300 for t in outs[0])
        assert outs[0] == outs[1]  # same seed, same drafter state: same output


def test_checkpoint_round_trip_resumes_weights_and_optimizer(tiny_dirs, tmp_path):
    from edgespec.models.drafters import build_drafter
    from edgespec.export.train.trainer import _load_checkpoint, _save_checkpoint

    target = load_transformer(tiny_dirs["llama"])
    a = target.args
    cfg = DrafterConfig(kind="mtp", dim=a.dim, vocab_size=a.vocab_size, feature_dim=a.dim)

    def fresh():
        m = build_drafter(cfg, target)
        return m, torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)

    m, opt = fresh()
    x = torch.randn(1, 5, a.dim)
    out = m(torch.arange(5)[None], x, torch.zeros_like(x), torch.arange(5)[None],
            torch.zeros(1, 1, 5, 5), (torch.zeros(1, a.n_kv_heads, 0, a.head_dim),) * 2)
    out[0].square().mean().backward()
    opt.step()
    _save_checkpoint(tmp_path / "c.safetensors", m, opt, 7)
    m2, opt2 = fresh()
    assert _load_checkpoint(tmp_path / "c.safetensors", m2, opt2) == 7
    for (k, v), (_, w) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(v, w), k
    p1 = [p for p in m.parameters() if p.requires_grad][0]
    p2 = [p for p in m2.parameters() if p.requires_grad][0]
    assert torch.equal(opt.state[p1]["exp_avg"], opt2.state[p2]["exp_avg"])


def test_vocab_trim_shrinks_heads_and_stays_lossless(trimmed_bundle):
    model = Model(trimmed_bundle)
    specs = model.manifest.drafters
    assert all(specs[k].options["trim_vocab"] == 40 for k in KINDS)
    assert specs["mtp"].d2t == "mtp.d2t.npy" and specs["eagle3"].graph.outputs[0].shape[-1] == 40
    d2t = np.load(trimmed_bundle / "eagle3.d2t.npy", allow_pickle=False)
    params = GenerationParams(max_new_tokens=24, stop_on_eos=False)
    assert specs["draft_model"].d2t == "draft_model.d2t.npy"
    for name, width in (("medusa", None), ("mtp", 1), ("eagle3", 3), ("draft_model", 1),
                        ("draft_model", 2)):
        drafter = model.drafter(name, tree_width=width)
        for prompt in ([5, 9, 11], [7]):
            ref, gen = Generator(model, params), Generator(model, params, drafter)
            for g in (ref, gen):
                g.append_tokens(prompt)
                while not g.is_done():
                    g.step()
            assert gen.tokens == ref.tokens
            tree = drafter.propose(gen.draft_state, gen.tokens, params.sampling, gen.rng)
            assert set(tree.tokens[1:].tolist()) <= set(d2t.tolist())  # drafts: kept ids only


def test_low_rank_heads_fold_into_onnx_and_stay_lossless(tiny_dirs, trained, tmp_path,
                                                         calibration):
    from edgespec.export.pipeline import ExportOptions as Opts

    hf = tiny_dirs["llama"]
    for trim in (0, 40):
        out = tmp_path / f"lr{trim}"
        export_bundle(hf, out, Opts(max_len=64, progress=False, head_rank=8, trim_vocab=trim,
                                    calibration=calibration, draft_model=tiny_dirs["qwen2"],
                                    drafters=tuple((k, trained[k][1]) for k in KINDS)))
        m = Model(out)
        for k in (*KINDS, "draft_model"):
            o = m.manifest.drafters[k].options
            assert o["head_rank"] == 8 and o["kl_distilled"] <= o["kl_svd"]
        draft = m.manifest.drafters["draft_model"].graph
        assert draft.outputs[0].shape[-1] == (trim or m.manifest.model.vocab_size)
        params = GenerationParams(max_new_tokens=16, stop_on_eos=False)
        for name in (*KINDS, "draft_model"):
            ref, gen = Generator(m, params), Generator(m, params, m.drafter(name))
            for g in (ref, gen):
                g.append_tokens([8, 3, 21])
                while not g.is_done():
                    g.step()
            assert gen.tokens == ref.tokens


def test_svd_init_is_the_best_low_rank_factorisation():
    from edgespec.export.train.low_rank import svd_init
    from edgespec.models.drafters import LowRankHead

    torch.manual_seed(0)
    w = torch.randn(50, 4) @ torch.randn(4, 16)  # rank 4
    a, b = svd_init(w, 4)
    assert torch.allclose(b @ a, w, atol=1e-4)
    a2, b2 = svd_init(w, 2)
    assert (b2 @ a2 - w).norm() < w.norm()
    d2t = torch.tensor([3, 7, 9])
    head = LowRankHead(*svd_init(w[d2t], 2), vocab=50, d2t=d2t)
    y = head(torch.randn(2, 16))
    assert y.shape == (2, 50) and torch.isinf(y[:, 0]).all() and torch.isfinite(y[:, d2t]).all()


def test_sweep_cli_writes_table_json_and_plot(tiny_dirs, trained, tmp_path, capsys,
                                              calibration):
    import json

    from edgespec.cli import main

    hf = tiny_dirs["llama"]
    pfile = tmp_path / "p.jsonl"
    pfile.write_text("".join(json.dumps({"prompt": f"t{i} t{i + 4}"}) + "\n" for i in range(3, 6)))
    assert main(["sweep", str(hf), "--drafter", f"mtp={trained['mtp'][1]}", "--trim-vocab", "40",
                 "--head-rank", "8", "--calibration", str(calibration),
                 "--draft-model", str(tiny_dirs["qwen2"]),
                 "--prompts", str(pfile), "--max-new-tokens", "8", "-o", str(tmp_path / "sw")]) == 0
    every = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert all(r["head_ms"] > 0 and r["tau"] >= 1 for r in every)
    for name in ("mtp", "draft_model"):
        rows = [r for r in every if r["drafter"] == name]
        assert [(r["trim_vocab"], r["head_rank"]) for r in rows] == [(0, 0), (0, 8), (40, 0),
                                                                     (40, 8)]
        assert rows[0]["head_bytes"] > rows[3]["head_bytes"]
    assert (tmp_path / "sw" / "sweep.png").stat().st_size > 10_000
    assert "| mtp | 40 | 8 |" in capsys.readouterr().out


def test_head_graph_lifts_the_drafter_head_out_of_its_graph(tiny_dirs, drafter_bundle, tmp_path):
    """The sweep times heads lifted out of the exported graphs: each must compute the head."""
    import onnxruntime as ort

    from edgespec.export.sweep import head_graph, time_heads

    w = load_transformer(tiny_dirs["llama"]).lm_head.weight.detach().numpy()  # [V, d]
    x = np.random.default_rng(7).standard_normal((3, w.shape[1]), dtype=np.float32)
    graphs = [head_graph(drafter_bundle / f"{k}.onnx") for k in KINDS]
    kinds = {k: d.graph.kind for k, d in Model(drafter_bundle).manifest.drafters.items()
             if k in KINDS}
    assert kinds == {"medusa": "plain", "mtp": "fused", "eagle3": "fused", "block": "fused"}
    for g in graphs:  # medusa (MatMul) and the layer drafters (Gemm) share the target's head
        sess = ort.InferenceSession(g.SerializeToString(), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], x @ w.T, rtol=1e-4, atol=1e-4)
    assert all(ms > 0 for ms in time_heads(graphs, [4, 1, 1, 1], rounds=2, calls=3))
    import onnx

    from edgespec.export.onnx_builder import Builder

    b = Builder()
    b.output(b.input("x", "float32", [1]), "y", "float32", [1])
    onnx.save_model(b.model("none", "test"), str(tmp_path / "none.onnx"))
    with pytest.raises(ValueError, match="no head weights"):
        head_graph(tmp_path / "none.onnx")


def test_layer_drafters_follow_the_target_graph_kind(tiny_dirs, trained, tmp_path):
    """A plain target (standard ops only) gets plain layer drafters; both stay lossless."""
    out = tmp_path / "plain"
    export_bundle(tiny_dirs["llama"], out, ExportOptions(
        max_len=64, progress=False, graph="plain",
        drafters=tuple((k, trained[k][1]) for k in ("mtp", "eagle3"))))
    m = Model(out)
    params = GenerationParams(max_new_tokens=12, stop_on_eos=False)
    for name in ("mtp", "eagle3"):
        spec = m.manifest.drafters[name].graph
        assert spec.kind == "plain" and spec.kv.update != "in_graph"
        ref, gen = Generator(m, params), Generator(m, params, m.drafter(name, 3, 2, 6))
        for g in (ref, gen):
            g.append_tokens([5, 9, 2])
            while not g.is_done():
                g.step()
        assert gen.tokens == ref.tokens and gen.stats.target_forwards < ref.stats.target_forwards


def test_export_cli_compresses_per_drafter(tiny_dirs, trained, tmp_path, calibration):
    """--trim-vocab K for all, NAME=K for one; --head-rank NAME=R for one drafter only."""
    from edgespec.cli.commands import main, per_drafter

    hf = tiny_dirs["llama"]
    out = tmp_path / "b"
    assert main(["export", str(hf), "-o", str(out), "--max-len", "64",
                 "--drafter", f"mtp={trained['mtp'][1]}",
                 "--drafter", f"medusa={trained['medusa'][1]}",
                 "--trim-vocab", "40", "--trim-vocab", "medusa=0", "--head-rank", "mtp=8",
                 "--calibration", str(calibration)]) == 0
    specs = Model(out).manifest.drafters
    assert specs["mtp"].options["trim_vocab"] == 40 and specs["mtp"].options["head_rank"] == 8
    assert "trim_vocab" not in specs["medusa"].options
    assert "head_rank" not in specs["medusa"].options
    assert main(["export", str(hf), "-o", str(tmp_path / "c"), "--drafter",
                 f"mtp={trained['mtp'][1]}", "--trim-vocab", "mtpp=40"]) == 2  # a typo: refused
    assert not (tmp_path / "c").exists()
    assert per_drafter(["64"], "--head-rank") == 64
    with pytest.raises(ValueError, match="NAME=integer"):
        per_drafter(["mtp=lots"], "--trim-vocab")


@pytest.mark.parametrize("kind", ("mtp", "medusa"))
def test_warm_start_copies_a_drafter_and_refuses_one_that_does_not_fit(kind, tiny_dirs, trained):
    from edgespec.models.drafters import build_drafter, trained_state, warm_start

    target = load_transformer(tiny_dirs["llama"])
    a = target.args
    cfg = DrafterConfig(kind=kind, dim=a.dim, vocab_size=a.vocab_size, feature_dim=a.dim)
    m = build_drafter(cfg, target)
    src = load_drafter(trained[kind][1], target)
    assert warm_start(m, trained[kind][1]).kind == kind
    for k, v in trained_state(src).items():
        assert torch.equal(trained_state(m)[k], v), k
    other = "eagle3" if kind == "mtp" else "mtp"
    before = {k: v.clone() for k, v in trained_state(m).items()}
    with pytest.raises(ValueError, match=f"is a {other} drafter"):
        warm_start(m, trained[other][1])
    if kind == "medusa":  # same kind, another head count: named, nothing copied
        m3 = build_drafter(DrafterConfig(kind="medusa", dim=a.dim, vocab_size=a.vocab_size,
                                         feature_dim=a.dim, num_heads=2), target)
        with pytest.raises(ValueError, match="does not fit"):
            warm_start(m3, trained[kind][1])
    assert all(torch.equal(before[k], v) for k, v in trained_state(m).items())


def test_step_split_counts_target_and_drafter_runs(drafter_bundle):
    from edgespec.devices.tune import StepSplit, decode

    model = Model(drafter_bundle)
    for name in KINDS:
        split = StepSplit()
        decode(model, model.drafter(name), [[5, 9, 11], [7, 8]], 12, split=split)
        sp = split.per_step_ms()
        assert split.steps > 0 and sp["target_ms"] > 0 and sp["draft_ms"] > 0, name
        assert sp["target_ms"] + sp["draft_ms"] + sp["other_ms"] == pytest.approx(
            sp["step_ms"], rel=1e-6)
