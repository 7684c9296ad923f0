"""Greedy decoding vs onnxruntime-genai's own speculative decoding, in one process.

    python benchmarks/ortgenai/spec_bench.py --target GENAI_DIR [--draft GENAI_DIR] \
        --prompts PROMPTS.jsonl [--modes ngram:3:4 draft:4] [--n-prompts 8] [--runs 5] [--json F]

Run it inside the ortgenai venv (onnxruntime-genai >= 0.16; 0.18.0 here). The genai folders
come from build.sh; --draft is needed only by draft:K modes. Modes:

  plain          target model, standard greedy decoding (the baseline)
  ngram:N:K      n-gram decoding on the target model alone:
                 set_speculative_options(ngram_size=N, max_draft_tokens=K)
  draft:K        base speculative decoding with the draft model: a composite model folder
                 (model.type "speculative", model.decoder = target, model.draft = draft) and
                 set_speculative_options(max_draft_tokens=K)

Optional flags after K (colon separated): "chain" (ngram_chained_lookup=True),
"adapt=M" (min_adaptive_k=M, adaptive width starting at M), "cooldown" (cooldown=True).
Example: --modes ngram:3:4 ngram:4:8:chain draft:2 draft:4 draft:4:adapt=2

Timing per prompt (the same for every mode):
  prefill = append_tokens(prompt)
  decode  = every generate_next_token() call, tokens 1..N (speculative rounds buffer their
            output and hand it out one token per call, so only the total is meaningful)
  decode ms/token of a run = total decode seconds / total generated tokens, over all prompts;
  tokens/s = 1000 / that. The table shows the median over --runs runs, and the ratio
  plain / mode (> 1 means the mode is faster) both from the medians and as the median of the
  per-run ratios (the engines alternate within each run, so pairs share the machine's state).
Every mode must produce exactly plain greedy's tokens (checked per prompt and per run); the
script exits with status 1 when one does not. Prints a table; --json FILE writes all figures.
"""

import argparse
import copy
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import onnxruntime_genai as og
from decode_bench import load_prompts  # beside this file: the same prompts, same ids

STAT_KEYS = (
    "rounds",
    "draft_tokens_proposed",
    "draft_tokens_evaluated",
    "draft_tokens_accepted",
    "correction_tokens",
    "bonus_tokens",
    "draft_forward_passes",
    "target_forward_passes",
    "target_verify_forward_passes",
    "ngram_lookup_hits",
    "ngram_lookup_misses",
    "standard_fallback_steps",
)


def parse_mode(text):
    """'plain' | 'ngram:N:K[:flags]' | 'draft:K[:flags]' -> (kind, speculative options)."""
    parts = text.split(":")
    kind = parts[0]
    if kind == "plain" and len(parts) == 1:
        return kind, {}
    if kind == "ngram" and len(parts) >= 3:
        opts, rest = {"ngram_size": int(parts[1]), "max_draft_tokens": int(parts[2])}, parts[3:]
    elif kind == "draft" and len(parts) >= 2:
        opts, rest = {"max_draft_tokens": int(parts[1])}, parts[2:]
    else:
        raise SystemExit(f"bad mode {text!r}: use plain, ngram:N:K[:flags] or draft:K[:flags]")
    for flag in rest:
        if flag == "chain" and kind == "ngram":
            opts["ngram_chained_lookup"] = True
        elif flag.startswith("adapt="):
            opts["min_adaptive_k"] = int(flag.split("=", 1)[1])
        elif flag == "cooldown":
            opts["cooldown"] = True
        else:
            raise SystemExit(f"bad flag {flag!r} in mode {text!r}")
    return kind, opts


def session_overlay(threads, section):
    return {
        section: {"session_options": {"intra_op_num_threads": threads, "inter_op_num_threads": 1}}
    }


def load_plain(folder, threads):
    cfg = og.Config(folder)
    cfg.overlay(json.dumps({"model": session_overlay(threads, "decoder")}))
    return og.Model(cfg)


def make_spec_folder(target, draft, k):
    """Composite folder: genai rejects '..' in config paths, so link both folders inside it."""
    tmp = tempfile.mkdtemp(prefix="edgespec-ortgenai-spec-")
    os.symlink(os.path.abspath(target), os.path.join(tmp, "target"))
    os.symlink(os.path.abspath(draft), os.path.join(tmp, "draft"))
    with open(os.path.join(target, "genai_config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(draft, "genai_config.json")) as f:
        dcfg = json.load(f)
    if dcfg["model"]["vocab_size"] != cfg["model"]["vocab_size"]:
        raise SystemExit("target and draft vocab sizes differ")
    cfg["model"]["type"] = "speculative"
    cfg["model"]["decoder"]["filename"] = "target/" + cfg["model"]["decoder"]["filename"]
    cfg["model"]["draft"] = copy.deepcopy(dcfg["model"]["decoder"])
    cfg["model"]["draft"]["filename"] = "draft/" + dcfg["model"]["decoder"]["filename"]
    cfg["speculative"] = {"max_draft_tokens": k}
    with open(os.path.join(tmp, "genai_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return tmp


def load_spec(folder, threads, draft_threads):
    cfg = og.Config(folder)
    ov = session_overlay(threads, "decoder")
    ov.update(session_overlay(draft_threads, "draft"))
    cfg.overlay(json.dumps({"model": ov}))
    return og.Model(cfg)


# genai's sliding-window attention (Gemma-3) needs a KV buffer at least its window long;
# main() sets it from the target's genai_config.json (a longer buffer changes no output:
# generation stops at max_new tokens)
MIN_LENGTH = 0


def generate(model, ids, max_new, spec_opts):
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, top_k=1,
                              max_length=max(len(ids) + max_new, MIN_LENGTH))
    if spec_opts:
        params.set_speculative_options(**spec_opts)
    gen = og.Generator(model, params)
    t0 = time.perf_counter()
    gen.append_tokens(ids)
    t1 = time.perf_counter()
    out = []
    while len(out) < max_new and not gen.is_done():
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    t2 = time.perf_counter()
    stats = gen.get_speculative_stats() if spec_opts else None
    return out, t1 - t0, t2 - t1, stats


def first_mismatch(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--target", required=True, help="genai folder of the target (build.sh)")
    ap.add_argument(
        "--draft", default=None, help="genai folder of the draft (build.sh); needed by draft:K"
    )
    ap.add_argument("--prompts", required=True, help="jsonl with id, prompt")
    ap.add_argument("--n-prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="ORT intra-op threads (target session)")
    ap.add_argument(
        "--draft-threads",
        type=int,
        default=None,
        help="ORT intra-op threads of the draft session (default: --threads)",
    )
    ap.add_argument(
        "--modes",
        nargs="+",
        default=["ngram:3:4", "draft:4"],
        help="speculative modes to compare with plain (see above)",
    )
    ap.add_argument(
        "--tokenizer", default=None, help="tokenizer.json (default: TARGET/tokenizer.json)"
    )
    ap.add_argument(
        "--json", default=None, metavar="FILE", help="write all figures and tokens here"
    )
    a = ap.parse_args()
    draft_threads = a.draft_threads or a.threads
    global MIN_LENGTH
    with open(os.path.join(a.target, "genai_config.json")) as f:
        window = json.load(f)["model"]["decoder"].get("sliding_window") or {}
    MIN_LENGTH = int(window.get("window_size", 0))

    names, prompts = load_prompts(
        a.prompts, a.n_prompts, a.tokenizer or os.path.join(a.target, "tokenizer.json")
    )
    modes = ["plain"] + [m for m in a.modes if m != "plain"]
    if len(set(modes)) != len(modes):
        raise SystemExit("duplicate modes")
    try:
        parsed = {m: parse_mode(m) for m in modes}
    except ValueError as e:
        raise SystemExit(f"bad mode: {e}")
    if a.draft is None and any(kind == "draft" for kind, _ in parsed.values()):
        raise SystemExit("draft:K modes need --draft (a genai folder made by build.sh)")

    plain_model = load_plain(a.target, a.threads)
    spec_models, tmp_dirs = {}, []
    try:
        engines = {}
        for m, (kind, opts) in parsed.items():
            if kind == "draft":
                k = opts["max_draft_tokens"]
                if k not in spec_models:
                    tmp_dirs.append(make_spec_folder(a.target, a.draft, k))
                    spec_models[k] = load_spec(tmp_dirs[-1], a.threads, draft_threads)
                engines[m] = (spec_models[k], opts)
            else:
                engines[m] = (plain_model, opts)

        for m in modes:  # warm-up, untimed
            model, opts = engines[m]
            generate(model, prompts[0], min(8, a.max_new_tokens), opts)

        load_start = os.getloadavg()[0]
        ms = {m: [] for m in modes}
        prefill = {m: [] for m in modes}
        tokens = {m: None for m in modes}
        stats = {m: None for m in modes}
        for r in range(a.runs):
            order = modes[r % len(modes) :] + modes[: r % len(modes)]  # rotate who goes first
            for m in order:
                model, opts = engines[m]
                run_tokens, dec_s, dec_n, run_stats = [], 0.0, 0, {}
                for ids in prompts:
                    out, pre, dec, st = generate(model, ids, a.max_new_tokens, opts)
                    run_tokens.append(out)
                    prefill[m].append(pre * 1e3)
                    dec_s += dec
                    dec_n += len(out)
                    for key in STAT_KEYS if st else ():
                        run_stats[key] = run_stats.get(key, 0) + int(st.get(key, 0))
                ms[m].append(dec_s / dec_n * 1e3)
                if tokens[m] is not None and tokens[m] != run_tokens:
                    raise RuntimeError(f"{m}: greedy outputs differ between runs")
                tokens[m], stats[m] = run_tokens, run_stats or None
        load_end = os.getloadavg()[0]
    finally:
        for d in tmp_dirs:
            shutil.rmtree(d, ignore_errors=True)

    base = statistics.median(ms["plain"])
    res = {
        "engine": "onnxruntime-genai",
        "version": og.__version__,
        "threads": a.threads,
        "draft_threads": draft_threads,
        "n_prompts": len(prompts),
        "max_new_tokens": a.max_new_tokens,
        "runs": a.runs,
        "loadavg1": [load_start, load_end],
        "prompt_ids": names,
        "modes": {},
    }
    all_match = True
    print(
        f"onnxruntime-genai {og.__version__}, {len(prompts)} prompts x {a.max_new_tokens} "
        "new tokens, "
        f"median of {a.runs} runs, threads {a.threads} (draft {draft_threads}), "
        f"loadavg1 {load_start:.2f} -> {load_end:.2f}"
    )
    print(
        f"{'mode':<26}{'tok/s':>9}{'ms/tok':>9}{'x plain':>9}{'x paired':>10}{'prefill ms':>12}"
        f"{'accept':>8}{'tok/tgt fwd':>13}  tokens == plain"
    )
    for m in modes:
        med = statistics.median(ms[m])
        paired = statistics.median(p / x for p, x in zip(ms["plain"], ms[m]))
        mism = [first_mismatch(t, p) for t, p in zip(tokens[m], tokens["plain"])]
        match = all(x is None for x in mism)
        all_match &= match
        st = stats[m]
        n_tok = sum(len(t) for t in tokens[m])
        accept = (
            st["draft_tokens_accepted"] / st["draft_tokens_evaluated"]
            if st and st["draft_tokens_evaluated"]
            else None
        )
        # n-gram lookup misses run a standard step that target_forward_passes does not count
        tgt_fwd = st["target_forward_passes"] + st["standard_fallback_steps"] if st else 0
        per_fwd = n_tok / tgt_fwd if tgt_fwd else None
        res["modes"][m] = {
            "speculative_options": parsed[m][1],
            "tokens_per_s_median": 1e3 / med,
            "ms_per_token_median": med,
            "ms_per_token_runs": ms[m],
            "speedup_vs_plain": base / med,
            "speedup_vs_plain_paired_median": paired,
            "prefill_ms_median": statistics.median(prefill[m]),
            "speculative_stats_last_run": st,
            "acceptance_rate": accept,
            "target_forwards_last_run": tgt_fwd or None,
            "tokens_per_target_forward": per_fwd,
            "tokens_equal_plain": match,
            "first_mismatch": mism,
            "tokens": tokens[m],
        }
        print(
            f"{m:<26}{1e3 / med:>9.1f}{med:>9.3f}{base / med:>9.2f}{paired:>10.2f}"
            f"{statistics.median(prefill[m]):>12.1f}"
            f"{'' if accept is None else f'{accept:.2f}':>8}"
            f"{'' if per_fwd is None else f'{per_fwd:.2f}':>13}  "
            f"{'yes' if match else 'NO, first mismatch per prompt: ' + str(mism)}"
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f)
    if not all_match:
        print("ERROR: a speculative mode's tokens differ from plain greedy", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
