"""Greedy decoding vs llama.cpp's own speculative decoding (draft model and n-gram lookup), CPU.

    python benchmarks/llamacpp/spec_bench.py --bin-dir /tmp/edgespec-llamacpp/build/bin \
        --target TARGET-f32.gguf [--target-f16 TARGET-f16.gguf] [--draft DRAFT-f32.gguf] \
        --tokenizer HF_DIR/tokenizer.json --prompts prompts.jsonl \
        [--modes plain:f16 draft:4 ngram-simple:2:4 lookup:8] [--n-prompts 8] [--max-new-tokens 128] [--runs 5] \
        [--threads 2] [--json FILE]

Run it with a Python that has `tokenizers` (the converter venv made by setup.sh has it). Every
model path is an argument; setup.sh names the GGUFs <HF folder name>-<f32|f16>.gguf.

Modes (plain:f32 is always run, and is the baseline of the ratios):
  plain:f32 | plain:f16     llama-completion on --target / --target-f16 (as decode_bench.py)
  draft:N[:pmin=P][:nmin=M] llama-speculative-simple --spec-type draft-simple, target = --target,
                            draft = --draft, --spec-draft-n-max N (p_min default 0, n_min 0)
  ngram-simple:N:M[:hits=H] llama-speculative-simple --spec-type ngram-simple (lookup n-gram N,
                            draft m-gram M)
  ngram-map-k:N:M[:hits=H]  llama-speculative-simple --spec-type ngram-map-k
  ngram-mod:N               llama-speculative-simple --spec-type ngram-mod (n_max N)
  lookup:N                  llama-lookup (examples/lookup: ngram cache of 1..4-grams of the prompt
                            and the output so far, n_draft N), target = --target
All are greedy (--temp 0 --top-k 1 --seed 1) with --ignore-eos, -t/-tb T (draft -td/-tbd T),
-c CTX, one process per prompt and mode.

What "decode" counts (llama.cpp's own timing lines, model load and prompt excluded):
  plain   "eval time = X ms / R runs" of llama_perf: the single-token decode calls for tokens
          2..N (R = N - 1; token 1 comes from the prompt's logits). Forward compute only:
          sampling is a separate line ("sampling time", kept in the JSON).
  draft / ngram-*  llama-speculative-simple's "decoded M tokens in T seconds": the wall time of
          its whole generation loop, i.e. every draft call (draft model forwards or n-gram
          lookups), every target verification forward, sampling and KV-cache trimming, for
          tokens 1..M. Its prompt step evaluates all prompt tokens but the last, so the first
          forward inside the loop is the last prompt token's (which yields token 1).
  lookup  llama-lookup's "decoded M tokens in T seconds": the same kind of wall time, but its
          prompt step evaluates the whole prompt, so token 1's forward is outside the loop
          (M tokens over at most M - 1 loop forwards; about 1/M in its favour).
  tok/s of a mode in a run = sum of tokens / sum of times over the prompts. Both speculative
  programs stop only after generating more than -n tokens (llama-speculative-simple passes -n
  N - 1 and gives N; llama-lookup may give up to N + draft), so M can exceed N; the rate
  uses the tokens each one counted.
  accept = n_accept / n_drafted as the tool prints them; tok/tgt fwd = M / (M - n_accept): each
  target forward in the loop yields exactly one token that was not a draft token.
Correctness: every speculative mode's text must start with plain:f32's text for that prompt (N
tokens; the speculative programs may add more), byte for byte, and be the same in every run
(plain:f16 is compared with plain:f32 too, but a difference there is reported, not an error). The programs
print text, not ids, so this is a comparison of bytes (as in decode_bench.py). The prompt that
each program used is checked too: plain from --verbose-prompt ids (must equal `tokenizers` on
--tokenizer, raw encode, no BOS), the speculative ones from the prompt text they echo.
Modes alternate within a run (all prompts of a mode, then the next mode; the order rotates from
run to run). The table gives the median over runs of tok/s and of the per-run ratio
mode tok/s / plain:f32 tok/s (> 1: faster than plain f32). Exit status 1 if any output differs.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

from decode_bench import load_prompts  # beside this file: the same prompts, same ids

EVAL_RE = re.compile(r"\beval time =\s*([\d.]+) ms /\s*(\d+) runs")
SAMPLE_RE = re.compile(r"\bsampling time =\s*([\d.]+) ms")
PROMPT_TOK_RE = re.compile(r"^\S+ I +(\d+) -> '", re.M)  # llama-completion --verbose-prompt
DECODED_RE = re.compile(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds")
N_DRAFTED_RE = re.compile(r"n_drafted\s*=\s*(\d+)")
N_ACCEPT_RE = re.compile(r"n_accept\s*=\s*(\d+)")
N_PREDICT_RE = re.compile(r"n_predict\s*=\s*(\d+)")
SYSINFO_RE = re.compile(r"system_info: (.*)")


def parse_mode(text):
    """-> (program, extra command-line args, description)."""
    parts = text.split(":")
    kind, rest = parts[0], parts[1:]

    def flags(items, allowed):
        out = {}
        for it in items:
            k, _, v = it.partition("=")
            if k not in allowed or not v:
                raise SystemExit(f"bad flag {it!r} in mode {text!r} (allowed: {allowed})")
            out[k] = v
        return out

    try:
        if kind == "plain" and rest in (["f32"], ["f16"]):
            return "plain", [], rest[0]
        if kind == "draft" and rest:
            f = flags(rest[1:], ("pmin", "nmin"))
            args = ["--spec-type", "draft-simple", "--spec-draft-n-max", str(int(rest[0]))]
            args += ["--spec-draft-p-min", f["pmin"]] if "pmin" in f else []
            args += ["--spec-draft-n-min", f["nmin"]] if "nmin" in f else []
            return "spec", args, None
        if kind in ("ngram-simple", "ngram-map-k") and len(rest) >= 2:
            f = flags(rest[2:], ("hits",))
            p = "--spec-" + kind
            args = ["--spec-type", kind, p + "-size-n", str(int(rest[0])), p + "-size-m",
                    str(int(rest[1]))]
            args += [p + "-min-hits", f["hits"]] if "hits" in f else []
            return "spec", args, None
        if kind == "ngram-mod" and len(rest) == 1:
            return "spec", ["--spec-type", "ngram-mod", "--spec-ngram-mod-n-max", str(int(rest[0]))], None
        if kind == "lookup" and len(rest) == 1:
            return "lookup", ["--spec-draft-n-max", str(int(rest[0]))], None
    except ValueError:
        pass
    raise SystemExit(f"bad mode {text!r}: see --help")


def run(cmd, check_line):
    """Run one process; llama.cpp logs (stdout text included) go through a worker thread that can
    lose its tail at exit (upstream issue 22142), so rerun (at most 3 tries) if a line is missing."""
    for attempt in range(3):
        p = subprocess.run(cmd, capture_output=True)
        err = p.stderr.decode("utf-8", "replace")
        if p.returncode != 0:
            raise RuntimeError(f"{Path(cmd[0]).name} exited {p.returncode}:\n{err[-3000:]}")
        if check_line(p.stdout, err):
            return p.stdout, err, attempt
    raise RuntimeError(f"{Path(cmd[0]).name}: output incomplete after 3 tries:\n{err[-2000:]}")


def run_plain(a, model, prompt):
    cmd = [str(Path(a.bin_dir) / "llama-completion"), "-m", model, "-p", prompt, "--no-escape",
           "-n", str(a.max_new_tokens), "-t", str(a.threads), "-tb", str(a.threads),
           "-c", str(a.ctx), "--temp", "0", "--top-k", "1", "--ignore-eos", "-no-cnv",
           "--no-warmup", "--no-display-prompt", "--verbose-prompt", "--seed", "1"]
    out, err, retries = run(cmd, lambda o, e: EVAL_RE.search(e) is not None)
    m, s = EVAL_RE.search(err), SAMPLE_RE.search(err)
    text = out[:-2] if out.endswith(b"\n\n") else out  # it ends with LOG("\n\n")
    sysinfo = SYSINFO_RE.search(err)
    return {"tokens": int(m.group(2)), "seconds": float(m.group(1)) / 1e3, "text": text,
            "sampling_ms": float(s.group(1)) if s else None,
            "prompt_ids": [int(x) for x in PROMPT_TOK_RE.findall(err)], "retries": retries,
            "system_info": sysinfo.group(1).strip() if sysinfo else None}


def run_spec(a, program, extra, prompt):
    """llama-speculative-simple or llama-lookup: stdout is "\\n\\n" PROMPT GENERATED "\\n\\n" "\\n\\n"."""
    pb = prompt.encode("utf-8")
    if program == "spec":
        cmd = [str(Path(a.bin_dir) / "llama-speculative-simple"), "-m", a.target]
        n = a.max_new_tokens - 1  # it stops once it has produced more than -n tokens
        if "draft-simple" in extra:
            cmd += ["-md", a.draft, "-td", str(a.threads), "-tbd", str(a.threads)]
    else:
        cmd = [str(Path(a.bin_dir) / "llama-lookup"), "-m", a.target]
        n = a.max_new_tokens - 1
    cmd += extra + ["-p", prompt, "--no-escape", "-n", str(n), "-t", str(a.threads), "-tb",
                    str(a.threads), "-c", str(a.ctx), "--temp", "0", "--top-k", "1",
                    "--ignore-eos", "--seed", "1"]

    def complete(out, err):
        return (DECODED_RE.search(err) is not None and N_ACCEPT_RE.search(err) is not None
                and out.startswith(b"\n\n" + pb) and out.endswith(b"\n\n\n\n"))

    out, err, retries = run(cmd, complete)
    d = DECODED_RE.search(err)
    return {"tokens": int(d.group(1)), "seconds": float(d.group(2)),
            "text": out[2 + len(pb):-4],
            "n_drafted": int(N_DRAFTED_RE.search(err).group(1)),
            "n_accept": int(N_ACCEPT_RE.search(err).group(1)),
            "n_predict": int(N_PREDICT_RE.search(err).group(1)),
            "retries": retries}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", required=True, help="llama.cpp build/bin (setup.sh: DIR/build/bin)")
    ap.add_argument("--target", required=True, help="target GGUF, f32 (plain:f32, draft, ngram, lookup)")
    ap.add_argument("--target-f16", default=None, help="target GGUF, f16 (plain:f16)")
    ap.add_argument("--draft", default=None, help="draft GGUF (draft:N modes)")
    ap.add_argument("--tokenizer", required=True, help="the target's tokenizer.json (prompt id check)")
    ap.add_argument("--prompts", required=True, help="jsonl with id, prompt")
    ap.add_argument("--modes", nargs="+", default=["plain:f16", "draft:4", "ngram-simple:2:4", "lookup:8"],
                    help="modes besides plain:f32 (see above)")
    ap.add_argument("--n-prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="-t/-tb, and -td/-tbd for the draft")
    ap.add_argument("--ctx", type=int, default=1024, help="context size (-c)")
    ap.add_argument("--json", default=None, metavar="FILE", help="write all figures and texts here")
    a = ap.parse_args()

    modes = ["plain:f32"] + [m for m in a.modes if m != "plain:f32"]
    if len(set(modes)) != len(modes):
        raise SystemExit("duplicate modes")
    parsed = {m: parse_mode(m) for m in modes}
    if "plain:f16" in modes and not a.target_f16:
        raise SystemExit("plain:f16 needs --target-f16")
    if any("draft-simple" in x for _, x, _ in parsed.values()) and not a.draft:
        raise SystemExit("draft:N modes need --draft")
    for p in [a.target, a.target_f16, a.draft]:
        if p and not Path(p).is_file():
            raise SystemExit(f"{p}: no such GGUF")

    rows, prompts, prompt_ids = load_prompts(a.prompts, a.n_prompts, a.tokenizer)

    load_start = os.getloadavg()[0]
    per_run = {m: [] for m in modes}
    texts = {m: None for m in modes}
    tokens = {m: None for m in modes}
    stats = {m: None for m in modes}
    sampling_ms = []
    sysinfo, retries = None, 0
    for r in range(a.runs):
        order = modes[r % len(modes):] + modes[: r % len(modes)]  # rotate who goes first
        for m in order:
            program, extra, dtype = parsed[m]
            n_tok, secs, run_texts, run_tokens, st = 0, 0.0, [], [], {"n_drafted": 0, "n_accept": 0, "n_predict": 0}
            for p, ids in zip(prompts, prompt_ids):
                if program == "plain":
                    res = run_plain(a, a.target if dtype == "f32" else a.target_f16, p)
                    if res["prompt_ids"] != ids:
                        raise RuntimeError("llama.cpp prompt tokens differ from tokenizers (BOS or pre-tokenizer?)")
                    sysinfo = res["system_info"] or sysinfo
                    if m == "plain:f32":
                        sampling_ms.append(res["sampling_ms"])
                else:
                    res = run_spec(a, program, extra, p)
                    for k in st:
                        st[k] += res[k]
                n_tok += res["tokens"]
                secs += res["seconds"]
                run_texts.append(res["text"])
                run_tokens.append(res["tokens"] + (1 if program == "plain" else 0))
                retries += res["retries"]
            per_run[m].append(n_tok / secs)
            if texts[m] is not None and texts[m] != run_texts:
                raise RuntimeError(f"{m}: greedy outputs differ between runs")
            texts[m], tokens[m] = run_texts, run_tokens
            stats[m] = st if program != "plain" else None
    load_end = os.getloadavg()[0]

    version = subprocess.run([str(Path(a.bin_dir) / "llama-completion"), "--version"],
                             capture_output=True, text=True).stderr.strip()
    res = {
        "engine": "llama.cpp (llama-completion, llama-speculative-simple, llama-lookup)",
        "build": {"version": version.replace("\n", "; "), "system_info": sysinfo},
        "models": {"target": a.target, "target_f16": a.target_f16, "draft": a.draft},
        "threads": a.threads, "runs": a.runs, "n_prompts": len(prompts),
        "max_new_tokens": a.max_new_tokens, "loadavg1": [load_start, load_end],
        "reruns_lost_log": retries, "prompt_ids": [r["id"] for r in rows],
        "plain_f32_sampling_ms_total": sum(x for x in sampling_ms if x is not None),
        "modes": {},
    }
    print(f"llama.cpp {version.splitlines()[0] if version else '?'}, {len(prompts)} prompts x "
          f"{a.max_new_tokens} new tokens, median of {a.runs} runs, threads {a.threads}, "
          f"loadavg1 {load_start:.2f} -> {load_end:.2f}")
    print(f"{'mode':<24}{'tok/s':>9}{'x plain:f32':>13}{'accept':>8}{'tok/tgt fwd':>13}"
          f"{'tokens':>8}  text == plain:f32")
    all_match = True  # plain:f16 may differ from f32 numerically: reported, not an error
    base = per_run["plain:f32"]
    for m in modes:
        ratio = statistics.median(x / b for x, b in zip(per_run[m], base))
        ref = texts["plain:f32"]
        match = [t.startswith(p) for t, p in zip(texts[m], ref)]
        if m != "plain:f16":
            all_match &= all(match)
        st = stats[m]
        accept = st["n_accept"] / st["n_drafted"] if st and st["n_drafted"] else None
        per_fwd = st["n_predict"] / (st["n_predict"] - st["n_accept"]) if st else None
        res["modes"][m] = {
            "command_args": parsed[m][1], "tokens_per_s_median": statistics.median(per_run[m]),
            "tokens_per_s_runs": per_run[m], "ratio_vs_plain_f32_paired_median": ratio,
            "acceptance_rate": accept, "tokens_per_target_forward": per_fwd,
            "stats_last_run": st, "tokens_per_prompt": tokens[m], "text_equals_plain_f32": match,
            "texts": [t.decode("utf-8", "replace") for t in texts[m]],
        }
        print(f"{m:<24}{statistics.median(per_run[m]):>9.1f}{ratio:>13.2f}"
              f"{'' if accept is None else f'{accept:.2f}':>8}"
              f"{'' if per_fwd is None else f'{per_fwd:.2f}':>13}"
              f"{min(tokens[m]):>5}-{max(tokens[m]):<3} "
              f"{'yes' if all(match) else 'NO, per prompt: ' + str(match)}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f)
    if not all_match:
        print("ERROR: a mode's output differs from plain:f32 greedy", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
