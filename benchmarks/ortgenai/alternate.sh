#!/usr/bin/env bash
# Ours and onnxruntime-genai's speculative decoding, alternated in one session so that host
# drift hits both alike: ROUNDS x (benchmarks/speculative.py, spec_bench.py), one run each.
# Usage: GENAI_TARGET=DIR PROMPTS=FILE [GENAI_DRAFT=DIR] bash benchmarks/ortgenai/alternate.sh BUNDLE [ROUNDS] [N_PROMPTS]
#   GENAI_TARGET: genai folder of the target (build.sh), PROMPTS: prompts jsonl (both required);
#   GENAI_DRAFT: genai folder of the draft, needed only when MODES has draft:K.
# Needs benchmarks/ortgenai/setup.sh and build.sh (target and draft) done; logs in $OUT.
set -euo pipefail
BUNDLE=${1:?bundle}; ROUNDS=${2:-4}; N=${3:-16}
TARGET=${GENAI_TARGET:?set GENAI_TARGET to the genai target folder (build.sh)}
PROMPTS=${PROMPTS:?set PROMPTS to the prompts jsonl}
DRAFT_ARGS=(); [ -n "${GENAI_DRAFT:-}" ] && DRAFT_ARGS=(--draft "$GENAI_DRAFT")
OUT=${OUT:-/tmp/edgespec-alternate}; mkdir -p "$OUT"
HERE=$(cd "$(dirname "$0")/../.." && pwd)
GENAI=${GENAI_PY:-/tmp/edgespec-ortgenai-venv/bin/python}
for r in $(seq 1 "$ROUNDS"); do
  "$HERE/.venv/bin/python" "$HERE/benchmarks/speculative.py" --bundle "$BUNDLE" --runs 1 \
    --prompts "$PROMPTS" --n-prompts "$N" --only "${OURS:-ngram g3$|ngram g4 min2$|ngram tuned}" > "$OUT/ours_$r.txt"
  "$GENAI" "$HERE/benchmarks/ortgenai/spec_bench.py" --target "$TARGET" "${DRAFT_ARGS[@]}" \
    --prompts "$PROMPTS" --runs 1 --n-prompts "$N" \
    --max-new-tokens 128 --threads 2 --modes ${MODES:-ngram:3:4 ngram:2:4} > "$OUT/genai_$r.txt"
done
"$HERE/.venv/bin/python" - "$OUT" "$ROUNDS" <<'PY'
import re, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
rows = {}
for r in range(1, rounds + 1):
    for line in open(f"{out}/ours_{r}.txt"):
        m = re.match(r"(edgespec [\w ]+?)\s{2,}([\d.]+)\s+[\d.]+\s+[\d.]+\s+([\d.]+)\s+([\d.]+)"
                     r"\s+([\d.]+)\s+([\d.]+)", line)
        if m:  # decode tok/s and its ratio to our plain decoding
            rows.setdefault(m[1], []).append((float(m[5]), float(m[6])))
    for line in open(f"{out}/genai_{r}.txt"):
        m = re.match(r"(plain|ngram\S*|draft\S*)\s+([\d.]+)\s+[\d.]+\s+([\d.]+)", line)
        if m:
            rows.setdefault("genai " + m[1], []).append((float(m[2]), float(m[3])))
print(f"median over {rounds} alternating rounds: decode tok/s, ratio to the engine's own plain")
for name, v in rows.items():
    print(f"{name:<32}{statistics.median(a for a, _ in v):>10.1f}"
          f"{statistics.median(b for _, b in v):>8.2f}  ({len(v)} rounds)")
PY
