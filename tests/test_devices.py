"""Device profiles (shipped JSON, validation, the probed `cpu`) and the cost model."""

import json

import numpy as np
import pytest

from edgespec.devices.cost_model import (CostCurve, acceptance_per_depth, best_gamma,
                                         chain_tokens_per_step, fit_curve, project_curve)
from edgespec.devices.profiles import list_profiles, load_profile, profile_from_dict

SHIPPED = ("jetson-orin-nano-8gb", "jetson-orin-nx-16gb", "jetson-agx-orin-64gb",
           "jetson-agx-thor", "rtx-3060", "rtx-4060-laptop", "rtx-4060", "rtx-4090")


@pytest.fixture
def cpu_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESPEC_CACHE", str(tmp_path))
    return tmp_path / "cpu-profile.json"


def test_every_shipped_profile_loads_with_sources():
    assert set(SHIPPED) | {"cpu"} <= set(list_profiles())
    for name in SHIPPED:
        p = load_profile(name)
        assert p.name == name and p.kind == "gpu" and p.provider in ("cuda", "tensorrt")
        assert 10 < p.memory_bandwidth_gbs < 2000 and 1 < p.peak_fp16_tflops < 2000
        assert {"memory_bandwidth_gbs", "peak_fp16_tflops", "memory_gb"} <= set(p.sources)
    # the ordering every published figure agrees on
    assert load_profile("rtx-4090").bandwidth > load_profile("jetson-agx-orin-64gb").bandwidth \
        > load_profile("jetson-orin-nano-8gb").bandwidth


def test_bad_profiles_and_unknown_names_are_refused():
    good = json.loads(json.dumps(load_profile("rtx-4090").__dict__))
    with pytest.raises(ValueError, match="unknown device profile 'rtx-9999'.*rtx-4090"):
        load_profile("rtx-9999")
    for change, message in ((("memory_bandwidth_gbs", -1), "positive number"),
                            (("memory_gb", "8"), "positive number"),
                            (("provider", "metal"), "provider 'metal' is not one of"),
                            (("unified_memory", "no"), "true or false")):
        with pytest.raises(ValueError, match=message):
            profile_from_dict({**good, change[0]: change[1]}, "x.json")
    with pytest.raises(ValueError, match=r"missing keys \['kind'\]"):
        profile_from_dict({k: v for k, v in good.items() if k != "kind"}, "x.json")


def test_cpu_profile_is_probed_once_and_cached(cpu_cache):
    with pytest.raises(ValueError, match="not been probed"):
        load_profile("cpu", probe=False)
    p = load_profile("cpu")
    assert p.kind == "cpu" and p.memory_bandwidth_gbs > 0.5 and p.peak_fp16_tflops > 0
    assert cpu_cache.is_file()
    stamp = cpu_cache.stat().st_mtime_ns
    assert load_profile("cpu", probe=False) == p and cpu_cache.stat().st_mtime_ns == stamp
    cpu_cache.write_text("{broken")  # a broken cache is measured again, not trusted
    assert load_profile("cpu").kind == "cpu"


def test_fit_curve_recovers_a_roofline():
    true = CostCurve(overhead=2e-4, memory=1e-3, compute=1.25e-4)  # knee at S = 8
    sizes = [1, 2, 4, 8, 16, 32, 64]
    rng = np.random.default_rng(0)
    times = true.time(np.array(sizes)) * (1 + 0.01 * rng.standard_normal(len(sizes)))
    fit = fit_curve(sizes, times)
    for s in sizes:
        assert fit.time(s) == pytest.approx(true.time(s), rel=0.05)
    assert fit.ratio(64) == pytest.approx(true.ratio(64), rel=0.05)
    with pytest.raises(ValueError, match=">= 3 points"):
        fit_curve([1, 2], [1.0, 1.0])


def test_chain_objective_and_best_gamma():
    lengths = [1] * 20 + [2] * 30 + [3] * 25 + [4] * 25  # drafts accepted: 0..3
    a = acceptance_per_depth(lengths, 3)
    np.testing.assert_allclose(a, [80 / 100, 50 / 80, 25 / 50])
    assert chain_tokens_per_step(a, 3) == pytest.approx(np.mean(lengths))
    flat = CostCurve(overhead=0.0, memory=1e-3, compute=1e-6)  # memory-bound: verify ~ free
    assert best_gamma(flat, 1e-5, a)[0] == 3  # cheap drafts: draft as deep as measured
    assert best_gamma(flat, 2e-3, a)[0] == 0  # a draft costs 2 target forwards: don't
    steep = CostCurve(overhead=0.0, memory=1e-4, compute=1e-3)  # compute-bound
    assert best_gamma(steep, 1e-5, a)[0] == 0


def test_projection_scales_with_the_profile(tiny_bundles, tmp_path, capsys, cpu_cache):
    from edgespec.cli import main

    bundle = tiny_bundles["llama"][1]
    rows = [{"accepted_lengths": [1, 2, 3, 2, 4, 1, 3]}]
    (tmp_path / "ev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["devices", "--bundle", str(bundle), "--drafter", "ngram", "--eval",
                 str(tmp_path / "ev.jsonl"), "jetson-orin-nano-8gb"]) == 0
    out = capsys.readouterr().out
    assert "jetson-orin-nano-8gb" in out and "best gamma" in out
    nano, big = load_profile("jetson-orin-nano-8gb"), load_profile("rtx-4090")
    assert project_curve(nano, 1e8, 0, 1e-4).time(1) > project_curve(big, 1e8, 0, 1e-4).time(1)
    assert main(["devices"]) == 0 and "rtx-4090" in capsys.readouterr().out


def test_tune_measures_stores_and_is_used_by_default(tiny_bundles, tmp_path, capsys, cpu_cache):
    import shutil

    from edgespec.cli import main
    from edgespec.manifest import BundleError
    from edgespec.runtime.model import Model

    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundles["llama"][1], bundle)
    pfile = tmp_path / "p.jsonl"
    pfile.write_text("".join(json.dumps({"prompt": f"t{i} t{i + 1} t{i} t{i + 1}"}) + "\n"
                             for i in range(3, 7)))
    assert main(["tune", str(bundle), "--drafter", "ngram", "--prompts", str(pfile),
                 "--max-gamma", "3", "--max-new-tokens", "12", "--keep-slower"]) == 0
    out = capsys.readouterr().out
    tuning = json.loads((bundle / "tuning.json").read_text())
    gamma = tuning["devices"]["cpu"]["drafters"]["ngram"]["gamma"]
    assert 1 <= gamma <= 3 and f"chose gamma {gamma}" in out
    model = Model(bundle)
    assert model.drafter("ngram").gamma == gamma  # the tuned default
    assert model.drafter("ngram", gamma=5).gamma == 5  # an explicit gamma wins
    assert main(["tune", str(bundle), "--drafter", "medusa", "--prompts", str(pfile)]) == 2
    (bundle / "tuning.json").write_text(json.dumps(
        {"format": 1, "devices": {"cpu": {"provider": "cpu",
                                          "drafters": {"ngram": {"gamma": 0}}}}}))
    with pytest.raises(BundleError, match="a gamma .1..64."):
        Model(bundle)


def test_tuning_json_that_leaves_the_bundle_is_refused(tiny_bundles, tmp_path):
    import shutil

    from edgespec.manifest import BundleError
    from edgespec.runtime.tuning import load_tuning

    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundles["llama"][1], bundle)
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"format": 1, "devices": {}}))
    (bundle / "tuning.json").symlink_to(outside)
    with pytest.raises(BundleError, match="leaves the bundle"):
        load_tuning(bundle)


def test_bench_writes_json_markdown_and_plot(tiny_bundles, tmp_path, capsys):
    from edgespec.cli import main

    pfile = tmp_path / "p.jsonl"
    pfile.write_text("".join(json.dumps({"prompt": f"t{i} t{i + 1} t{i} t{i + 1}"}) + "\n"
                             for i in range(3, 6)))
    out = tmp_path / "bench"
    assert main(["bench", str(tiny_bundles["llama"][1]), "--drafter", "ngram", "--gammas",
                 "1,3", "--prompts", str(pfile), "--runs", "2", "--max-new-tokens", "8",
                 "-o", str(out)]) == 0
    r = json.loads((out / "bench.json").read_text())
    assert [e["engine"] for e in r["engines"]] == ["plain", "ngram g1", "ngram g3"]
    assert all(e["min"] <= e["tok_s"] <= e["max"] and e["tau"] >= 1 for e in r["engines"])
    assert len(r["acceptance_per_depth"]) == 3 and r["ttft_s"] > 0
    assert r["engines"][0]["mbsu"] == pytest.approx(1.0)  # plain: one token per forward
    assert "| ngram g3 |" in (out / "bench.md").read_text()
    for e in r["engines"]:  # the step split adds up; n-gram lookup runs no network
        sp = e["split"]
        assert sp["target_ms"] > 0 and sp["draft_ms"] == 0 and sp["other_ms"] >= 0
        assert sp["target_ms"] + sp["other_ms"] == pytest.approx(sp["step_ms"], rel=1e-6)
    assert "drafter forwards" in (out / "bench.md").read_text()
    assert (out / "bench.png").stat().st_size > 10_000
    assert main(["bench", str(tiny_bundles["llama"][1]), "--drafter", "ngram", "--gammas", "0",
                 "--prompts", str(pfile), "-o", str(out)]) == 2
    capsys.readouterr()


def test_device_memory_reads_this_process_from_nvidia_smi():
    from edgespec.devices.device_memory import device_memory_mb, parse_compute_apps

    text = "1234, 812\n999, 40\n1234, 100\nNo running processes found\n"
    assert parse_compute_apps(text, 1234) == 912.0  # two GPUs
    assert parse_compute_apps(text, 5) is None and parse_compute_apps("", 1234) is None
    assert device_memory_mb("cpu") is None  # a CPU run: host memory is the device's


def test_the_device_layer_reads_the_runtime_provider_table(monkeypatch):
    """One provider table (runtime/providers.py): a profile may name every preset and no
    other, device memory is read for the presets whose buffers live on a CUDA device, and
    capture and the CUDA-library preload are fields of the entry, not lists kept apart."""
    from edgespec.devices import device_memory, profiles
    from edgespec.runtime import providers as rp

    good = json.loads(json.dumps(load_profile("rtx-4090").__dict__))
    for name in rp.PROVIDERS:
        assert profile_from_dict({**good, "provider": name}, "x.json").provider == name
    assert set(device_memory.GPU_PROVIDERS) == {"cuda", "tensorrt"}
    for name, entry in rp.PROVIDERS.items():
        captured = rp.capture_providers(entry.sessions)
        assert (captured != entry.sessions) == (entry.capture_option is not None), name
    monkeypatch.setattr(rp, "_preload", lambda first: f"loaded for {first}")
    assert rp.preload_gpu_libraries(rp.PROVIDERS["cuda"].sessions) == \
        "loaded for CUDAExecutionProvider"
    assert rp.preload_gpu_libraries(rp.PROVIDERS["dml"].sessions) == ""
