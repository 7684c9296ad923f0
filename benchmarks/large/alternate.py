"""Ours and the peers on the same weights, in alternating rounds: each round runs every engine
once over the same prompts (our engines through benchmarks/speculative.py, onnxruntime-genai's
through benchmarks/ortgenai/spec_bench.py in its venv, llama.cpp's through
benchmarks/llamacpp/spec_bench.py), so a drift of the host's speed hits all of them alike.
Reports per engine the median over rounds of decode tokens/s and of its ratio to our plain
decoding in the same round.

    python benchmarks/large/alternate.py --bundle BUNDLE [BUNDLE2 ...] --prompts P.jsonl \
        [--ours REGEX] [--genai-target DIR --genai-draft DIR --genai-int4 DIR] \
        [--llamacpp-dir DIR --llamacpp-target NAME --llamacpp-draft NAME] \
        [--llamacpp-gguf FILE.gguf --llamacpp-gguf-f16 FILE-f16.gguf] \
        [--rounds 5] [--n-prompts 16] [--max-new-tokens 128] [--out DIR]

Decode tokens/s is each engine's own decode figure: ours counts the tokens after the first over
the time after it (speculative.py); genai's the tokens of every generate_next_token call over
their time; llama.cpp's plain modes its `eval time` line (forwards only, no sampling), its
speculative modes the wall time of their loop (benchmarks/llamacpp/spec_bench.py says which).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent


def ours(ns, out: Path) -> dict[str, float]:
    cmd = [sys.executable, str(BENCH / "speculative.py"), "--bundle", *ns.bundle, "--runs", "1",
           "--n-prompts", str(ns.n_prompts), "--max-new-tokens", str(ns.max_new_tokens),
           "--prompts", ns.prompts, "--threads", str(ns.threads), "--json", str(out)]
    if ns.ours:
        cmd += ["--only", ns.ours]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    engines = json.loads(out.read_text())["engines"]
    return {name: e["decode_tok_s"] for name, e in engines.items()}


def genai(ns, target: str, modes: list[str], tag: str, out: Path) -> dict[str, float]:
    cmd = [ns.genai_python, str(BENCH / "ortgenai" / "spec_bench.py"), "--target", target,
           "--prompts", ns.prompts, "--n-prompts", str(ns.n_prompts), "--max-new-tokens",
           str(ns.max_new_tokens), "--runs", "1", "--threads", str(ns.threads),
           "--modes", *modes, "--json", str(out)]
    if ns.genai_draft:
        cmd += ["--draft", ns.genai_draft]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    res = json.loads(out.read_text())["modes"]
    return {f"{tag} {m}": r["tokens_per_s_median"] for m, r in res.items()}


def llamacpp(ns, out: Path) -> dict[str, float]:
    d = Path(ns.llamacpp_dir)
    # the target: --llamacpp-gguf (any GGUF, e.g. a real model's own Q4 file; its plain mode
    # is labelled by the file's name), else setup.sh's DIR/TARGET-f32.gguf
    target = ns.llamacpp_gguf or str(d / f"{ns.llamacpp_target}-f32.gguf")
    f16 = ns.llamacpp_gguf_f16 or str(d / f"{ns.llamacpp_target}-f16.gguf")
    cmd = [ns.llamacpp_python, str(BENCH / "llamacpp" / "spec_bench.py"),
           "--bin-dir", str(d / "build" / "bin"), "--target", target, "--target-f16", f16,
           "--tokenizer", ns.tokenizer, "--prompts", ns.prompts,
           "--n-prompts", str(ns.n_prompts), "--max-new-tokens", str(ns.max_new_tokens),
           "--runs", "1", "--threads", str(ns.threads), "--modes", *ns.llamacpp_modes,
           "--json", str(out)]
    if ns.llamacpp_draft:
        cmd += ["--draft", str(d / f"{ns.llamacpp_draft}-f32.gguf")]
    # exit status 1 = a mode's text differs from its plain f32 greedy (its batched verify
    # kernels can flip a near-tie): reported in the JSON and the summary, not fatal here
    out.unlink(missing_ok=True)
    done = subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL)
    if not out.is_file():  # it stopped before writing (a bad mode, a missing file): its stderr
        raise SystemExit(f"llama.cpp's spec_bench.py wrote no results (exit {done.returncode})")
    res = json.loads(out.read_text())["modes"]
    label = (lambda m: m.replace("plain:f32", f"plain:{Path(target).stem}")
             if ns.llamacpp_gguf else m)
    for m, r in res.items():
        if not all(r["text_equals_plain_f32"]):
            DIFFERS.add(f"llama.cpp {label(m)}")
    return {f"llama.cpp {label(m)}": r["tokens_per_s_median"] for m, r in res.items()}


DIFFERS: set[str] = set()  # engines whose greedy text differed from their plain greedy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", nargs="+", required=True, help="our bundle(s) (speculative.py)")
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--ours", default=None, help="regex of our engines (speculative.py --only)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n-prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--genai-python", default="/tmp/edgespec-ortgenai-venv/bin/python")
    ap.add_argument("--genai-target", default=None, help="genai fp32 folder of the target")
    ap.add_argument("--genai-draft", default=None, help="genai folder of the draft model")
    ap.add_argument("--genai-int4", default=None, help="genai int4 folder of the target")
    ap.add_argument("--genai-modes", nargs="+", default=["ngram:3:4", "draft:4"])
    ap.add_argument("--llamacpp-python", default="/tmp/edgespec-llamacpp-venv/bin/python")
    ap.add_argument("--llamacpp-dir", default=None, help="benchmarks/llamacpp/setup.sh's folder")
    ap.add_argument("--llamacpp-target", default=None, help="GGUF name of the target")
    ap.add_argument("--llamacpp-draft", default=None, help="GGUF name of the draft model")
    ap.add_argument("--llamacpp-gguf", default=None,
                    help="the target's GGUF file (instead of DIR/TARGET-f32.gguf)")
    ap.add_argument("--llamacpp-gguf-f16", default=None, help="its f16 GGUF (plain:f16)")
    ap.add_argument("--llamacpp-modes", nargs="+",
                    default=["plain:f16", "draft:4", "ngram-simple:2:4", "lookup:8"])
    ap.add_argument("--tokenizer", default=None, help="tokenizer.json (default: the bundle's)")
    ap.add_argument("--out", default="alternate", help="folder for each round's JSON files")
    ns = ap.parse_args()
    ns.tokenizer = ns.tokenizer or str(Path(ns.bundle[0]) / "tokenizer.json")
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    rates: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    for r in range(ns.rounds):
        got = ours(ns, out / f"ours_{r}.json")
        if ns.genai_target:
            got |= genai(ns, ns.genai_target, ns.genai_modes, "genai fp32", out / f"genai_{r}.json")
        if ns.genai_int4:
            got |= genai(ns, ns.genai_int4, ["plain"], "genai int4", out / f"genai4_{r}.json")
        if ns.llamacpp_dir:
            got |= llamacpp(ns, out / f"llama_{r}.json")
        base = got["edgespec none"]
        for name, rate in got.items():
            rates.setdefault(name, []).append(rate)
            ratios.setdefault(name, []).append(rate / base)
        print(f"round {r + 1}/{ns.rounds}: " + ", ".join(f"{k} {v:.0f}" for k, v in got.items()),
              file=sys.stderr, flush=True)
    print(f"{ns.n_prompts} prompts x {ns.max_new_tokens} new tokens, greedy, {ns.threads} "
          f"threads, median over {ns.rounds} alternating rounds")
    print("| engine | decode tok/s | vs our plain | min..max ratio |\n| --- | --- | --- | --- |")
    for name in sorted(rates, key=lambda k: -statistics.median(ratios[k])):
        rs = ratios[name]
        note = " (output differs from its plain greedy on some prompt)" if name in DIFFERS else ""
        print(f"| {name}{note} | {statistics.median(rates[name]):.1f} | "
              f"{statistics.median(rs):.2f} | {min(rs):.2f}..{max(rs):.2f} |")
    (out / "summary.json").write_text(json.dumps({"rates": rates, "ratios": ratios}, indent=1))


if __name__ == "__main__":
    main()
