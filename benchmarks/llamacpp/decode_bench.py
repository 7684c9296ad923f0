"""Greedy per-token decode latency with llama.cpp's llama-completion (f32 and f16 GGUF).

    python benchmarks/llamacpp/decode_bench.py [--dir /tmp/edgespec-llamacpp] --model HF_DIR \
        --prompts PROMPTS.jsonl [--n-prompts 8] [--max-new-tokens 128] \
        [--runs 5] [--threads 2] [--hf-check HF_DIR]

--model is the HF model folder setup.sh converted (or just its name): the GGUFs are
DIR/<name>-f32.gguf and DIR/<name>-f16.gguf, and the tokenizer is HF_DIR/tokenizer.json unless
--tokenizer says otherwise. Without --model, DIR must hold the GGUFs of exactly one model.

Needs `tokenizers` (plus torch and transformers for --hf-check); the converter venv made by
setup.sh has them. Prints one JSON line on stdout.

Each prompt is one llama-completion process (greedy: --temp 0 --top-k 1, --ignore-eos, -n N,
-t/-tb T, no warm-up, no BOS: the GGUF has add_bos off, which --verbose-prompt confirms).
Per prompt we parse llama.cpp's own timing line
  "eval time = X ms / R runs (... ms per token ...)"
which covers the one-token decode calls for tokens 2..N (R = N - 1; token 1 comes from the
prompt's logits). ms/token of a run = sum X / sum R over the prompts; the figure is the median
over runs, f32 and f16 alternating within each run. The prompt ids llama.cpp used (from
--verbose-prompt) must equal `tokenizers` on tokenizer.json (raw encode, no BOS), else it stops.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
from pathlib import Path

from tokenizers import Tokenizer

EVAL_RE = re.compile(r"\beval time =\s*([\d.]+) ms /\s*(\d+) runs")
PROMPT_TOK_RE = re.compile(r"^\S+ I +(\d+) -> '", re.M)  # --verbose-prompt lines
SYSINFO_RE = re.compile(r"system_info: (.*)")


def byte_decoder():
    """Inverse of GPT-2's bytes_to_unicode: byte-level BPE token text -> raw bytes."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def load_prompts(path, k, tokenizer_file):
    """The first k prompts of a jsonl and their ids (`tokenizers`, raw encode, no BOS): what
    llama.cpp must be seen to use (checked against its --verbose-prompt ids)."""
    tok = Tokenizer.from_file(tokenizer_file)
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()][:k]
    prompts = [r["prompt"] for r in rows]
    return rows, prompts, [tok.encode(p).ids for p in prompts]


def run_llama(binary, model, prompt, n, threads, ctx):
    cmd = [binary, "-m", model, "-p", prompt, "--no-escape", "-n", str(n), "-t", str(threads),
           "-tb", str(threads), "-c", str(ctx), "--temp", "0", "--top-k", "1", "--ignore-eos",
           "-no-cnv", "--no-warmup", "--no-display-prompt", "--verbose-prompt", "--seed", "1"]
    # llama.cpp logs (stdout text included) go through a worker thread that can lose its tail at
    # exit (upstream issue 22142); if the timing line is missing, that process is run again.
    for attempt in range(3):
        p = subprocess.run(cmd, capture_output=True, check=True)
        err = p.stderr.decode("utf-8", "replace")
        m = EVAL_RE.search(err)
        if m is not None:
            break
    else:
        raise RuntimeError(f"no eval timing in llama-completion output:\n{err[-2000:]}")
    out = p.stdout[:-2] if p.stdout.endswith(b"\n\n") else p.stdout  # it ends with LOG("\n\n")
    sysinfo = SYSINFO_RE.search(err)
    return {"retries": attempt, "eval_ms": float(m.group(1)), "eval_runs": int(m.group(2)), "text": out,
            "prompt_ids": [int(x) for x in PROMPT_TOK_RE.findall(err)],
            "system_info": sysinfo.group(1).strip() if sysinfo else None}


def hf_greedy(hf_dir, prompts, n, threads):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    outs = []
    with torch.no_grad():
        for ids in prompts:
            x = torch.tensor([ids])
            y = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                               max_new_tokens=n, min_new_tokens=n)
            outs.append(y[0, len(ids):].tolist())
    return outs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/tmp/edgespec-llamacpp", help="setup.sh output folder")
    ap.add_argument("--prompts", required=True, help="jsonl with id, prompt")
    ap.add_argument("--n-prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=1024, help="llama.cpp context size (-c)")
    ap.add_argument("--dtypes", default="f32,f16")
    ap.add_argument("--model", default=None, metavar="HF_DIR_OR_NAME",
                    help="HF folder given to setup.sh, or its name: picks DIR/<name>-<dtype>.gguf")
    ap.add_argument("--tokenizer", default=None, help="tokenizer.json (default: HF_DIR/tokenizer.json)")
    ap.add_argument("--hf-check", default=None, metavar="HF_DIR",
                    help="compare f32/f16 outputs with transformers greedy generate on HF_DIR")
    a = ap.parse_args()

    d = Path(a.dir)
    binary = str(d / "build" / "bin" / "llama-completion")
    dtypes = a.dtypes.split(",")
    if a.model is None:  # only unambiguous when DIR holds one model
        names = sorted({p.name[: -len(f"-{dtypes[0]}.gguf")] for p in d.glob(f"*-{dtypes[0]}.gguf")})
        if len(names) != 1:
            raise SystemExit(f"{d} holds GGUFs of {names or 'no model'}: pass --model")
        name = names[0]
    else:
        name = Path(a.model).name
    models = {t: str(d / f"{name}-{t}.gguf") for t in dtypes}
    for path in models.values():
        if not Path(path).is_file():
            raise SystemExit(f"{path}: no such GGUF (run setup.sh on the model folder)")
    tok_file = a.tokenizer or (str(Path(a.model) / "tokenizer.json") if a.model and Path(a.model).is_dir() else None)
    if tok_file is None:
        raise SystemExit("pass --tokenizer (or --model HF_DIR holding tokenizer.json)")
    rows, prompts, prompt_ids = load_prompts(a.prompts, a.n_prompts, tok_file)

    load_start = os.getloadavg()[0]
    per_run = {t: [] for t in dtypes}
    texts = {t: None for t in dtypes}
    gen_tokens, sysinfo, retries = set(), None, 0
    for _ in range(a.runs):
        for t in dtypes:
            ms, runs, run_texts = 0.0, 0, []
            for p, ids in zip(prompts, prompt_ids):
                r = run_llama(binary, models[t], p, a.max_new_tokens, a.threads, a.ctx)
                if r["prompt_ids"] != ids:
                    raise RuntimeError("llama.cpp prompt tokens differ from tokenizers (BOS or pre-tokenizer?)")
                ms, runs = ms + r["eval_ms"], runs + r["eval_runs"]
                gen_tokens.add(r["eval_runs"] + 1)
                run_texts.append(r["text"])
                sysinfo = r["system_info"]
                retries += r["retries"]
            per_run[t].append(ms / runs)
            if texts[t] is not None and texts[t] != run_texts:
                raise RuntimeError(f"{t}: greedy outputs differ between runs")
            texts[t] = run_texts

    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stderr.strip()
    source = d / "SOURCE.txt"
    res = {
        "engine": "llama.cpp (llama-completion)",
        "models": models,
        "build": {"version": version.replace("\n", "; "), "system_info": sysinfo,
                  "source": source.read_text().strip() if source.exists() else None},
        "ms_per_token_median": {t: statistics.median(v) for t, v in per_run.items()},
        "ms_per_token_min": {t: min(v) for t, v in per_run.items()},
        "ms_per_token_max": {t: max(v) for t, v in per_run.items()},
        "ms_per_token_runs": per_run,
        "runs": a.runs,
        "threads": a.threads,
        "prompts": len(prompts),
        "tokens_per_prompt": sorted(gen_tokens),
        "reruns_lost_log": retries,
        "loadavg1": [load_start, os.getloadavg()[0]],  # other CPU load skews the figures
        "prompt_ids": [r["id"] for r in rows],
    }
    if a.hf_check:
        bd, tok = byte_decoder(), Tokenizer.from_file(tok_file)
        ref = hf_greedy(a.hf_check, prompt_ids, a.max_new_tokens, a.threads)
        ref_bytes = [[bytes(bd[c] for c in tok.id_to_token(i)) for i in ids] for ids in ref]
        res["hf_check"] = {}
        for t in dtypes:
            match, first_diff = [], []
            for pieces, got in zip(ref_bytes, texts[t]):
                want = b"".join(pieces)
                match.append(want == got)
                # index of the first HF token whose bytes are not reproduced by llama.cpp
                pos, k = 0, None
                for i, piece in enumerate(pieces):
                    if got[pos:pos + len(piece)] != piece:
                        k = i
                        break
                    pos += len(piece)
                first_diff.append(k)
            res["hf_check"][t] = {"exact_bytes_match": match, "first_mismatch_token": first_diff}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
