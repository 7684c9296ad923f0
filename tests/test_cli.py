"""The CLI as a newcomer uses it: export --demo, info, run, eval."""

import json

from conftest import PROMPTS

from edgespec.cli import main


def test_demo_export_info_run_eval(tmp_path, capsys, prompts):
    bundle = tmp_path / "demo"
    assert main(["export", "--demo", "-o", str(bundle), "--max-len", "512"]) == 0
    assert "parity vs torch" in capsys.readouterr().out
    assert main(["info", str(bundle)]) == 0
    info = capsys.readouterr().out
    assert "llama: 6 layers" in info and "drafters    ngram, draft_model" in info
    assert main(["run", str(bundle), "def add(a, b):\n", "--max-new-tokens", "12"]) == 0
    assert len(capsys.readouterr().out.strip()) > 0
    pfile = PROMPTS if PROMPTS.is_file() else tmp_path / "p.jsonl"
    if not PROMPTS.is_file():
        pfile.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    out = tmp_path / "res.jsonl"
    results = {}
    for drafter in ("none", "ngram", "draft_model"):
        assert main(["eval", str(bundle), "--prompts", str(pfile), "--limit", "3",
                     "--max-new-tokens", "16", "--greedy", "--drafter", drafter,
                     "--out", str(out)]) == 0
        summary = capsys.readouterr().out
        assert "tokens/s" in summary and "tokens per target forward" in summary
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(rows) == 3
        for r in rows:
            assert {"id", "output_ids", "text", "new_tokens", "target_forwards", "seconds",
                    "accepted_lengths", "mean_accepted"} <= set(r)
            assert r["new_tokens"] == len(r["output_ids"]) == sum(r["accepted_lengths"]) <= 16
        results[drafter] = [r["output_ids"] for r in rows]
    assert results["none"] == results["ngram"] == results["draft_model"]


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgespec info: error:") and "edgespec export" in err
    (tmp_path / "src").mkdir()  # a folder without a checkpoint in it
    assert main(["export", str(tmp_path / "src"), "-o", str(tmp_path / "b")]) == 2
    assert "config.json" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_unknown_drafter_named(tmp_path, capsys, tiny_bundles):
    pfile = tmp_path / "p.jsonl"
    pfile.write_text(json.dumps({"id": 0, "prompt": "t5 t6"}) + "\n")
    rc = main(["eval", str(tiny_bundles["llama"][1]), "--prompts", str(pfile), "--drafter",
               "medusa", "--out", str(tmp_path / "r.jsonl")])
    assert rc == 2 and "unknown drafter 'medusa'" in capsys.readouterr().err


def test_train_without_data_distills_then_exports_and_runs(tiny_dirs, tmp_path, capsys):
    hf = tiny_dirs["llama"]
    pfile = tmp_path / "p.jsonl"
    pfile.write_text("".join(json.dumps({"prompt": f"t{i} t{i + 7} t{i + 3}"}) + "\n"
                             for i in range(3, 15)))
    drafter = tmp_path / "mtp"
    assert main(["train", "mtp", str(hf), "-o", str(drafter), "--prompts", str(pfile),
                 "--max-new-tokens", "12", "--steps", "6", "--batch", "4"]) == 0
    out = capsys.readouterr().out
    assert "distill.safetensors: 12 sequences" in out and "greedy chain tau" in out
    bundle = tmp_path / "b"
    assert main(["export", str(hf), "-o", str(bundle), "--max-len", "64",
                 "--drafter", f"fast={drafter}"]) == 0
    assert main(["info", str(bundle)]) == 0
    assert "  fast        mtp" in capsys.readouterr().out
    assert main(["run", str(bundle), "t5 t9", "--max-new-tokens", "8", "--drafter", "fast"]) == 0
    assert main(["run", str(bundle), "t5", "--drafter", "nope"]) == 2
    assert "unknown drafter 'nope'" in capsys.readouterr().err


def test_static_shapes_export_and_cuda_graphs_flags(tiny_dirs, tmp_path, capsys):
    bundle = tmp_path / "static"
    assert main(["export", str(tiny_dirs["llama"]), "-o", str(bundle), "--max-len", "64",
                 "--shapes", "static"]) == 0
    capsys.readouterr()
    pfile = tmp_path / "p.jsonl"
    pfile.write_text(json.dumps({"id": 0, "prompt": "t5 t6 t5 t6 t5"}) + "\n")
    outs = {}
    for graphs, kv in (("off", "host"), ("on", "device")):
        out = tmp_path / f"{graphs}.jsonl"
        assert main(["eval", str(bundle), "--prompts", str(pfile), "--drafter", "ngram",
                     "--max-new-tokens", "12", "--kv-device", kv, "--cuda-graphs", graphs,
                     "--out", str(out)]) == 0
        outs[graphs] = json.loads(out.read_text())["output_ids"]
    assert outs["on"] == outs["off"] and len(outs["on"]) == 12
    capsys.readouterr()
    dynamic = tmp_path / "dynamic"
    assert main(["export", str(tiny_dirs["llama"]), "-o", str(dynamic), "--max-len", "64",
                 "--shapes", "dynamic"]) == 0
    capsys.readouterr()
    rc = main(["run", str(dynamic), "t5", "--cuda-graphs", "on"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--shapes static" in err


def test_run_compare_reports_the_speedup_and_the_same_text(trimmed_bundle, capsys, tmp_path):
    prompt = tmp_path / "p.txt"
    prompt.write_text("t5 t9 t11 t5 t9 t11 t5")
    assert main(["run", str(trimmed_bundle), "-f", str(prompt), "--drafter", "ngram",
                 "--max-new-tokens", "20", "--compare"]) == 0
    err = capsys.readouterr().err
    assert "speculation" in err and "same text as plain decoding" in err
    assert main(["run", str(trimmed_bundle), "t5", "-f", str(prompt)]) == 2  # one source only
    assert "one of them" in capsys.readouterr().err
