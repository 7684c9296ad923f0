#!/usr/bin/env bash
# The last call of a GPU session on a lent machine (the device tool; ../shared/gpu/README.md).
# Earlier calls carried, one folder each, the pieces of one tar (made by devices/gpu_pack.sh):
# onnxruntime-gpu (its wheel's files, recompressed) and the bundles to check. This call puts it
# together, puts onnxruntime-gpu and edgespec into a temporary site, then runs, each step
# under its own time limit so that one hang cannot eat the session:
#   1. benchmarks/gpu_lossless.py on each bundle: every drafter equals CUDA's own greedy output,
#      CUDA graphs off and on; the cost curve T(S)/T(1); the CPU's output beside it;
#   2. benchmarks/speculative.py --provider cuda on each bundle, CUDA graphs on and off.
#
#   bash devices/gpu_session.sh            # on the device, from the repository root
# Env: PARTS (glob of the pieces, default .gpu[0-9]*/part*), OUT, ONLY (speculative.py's
# --only regex), PROMPTS, N and N_OFF (prompts with CUDA graphs on / off), TOKENS, RUNS,
# DEADLINE, PLAN.
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/session.log") 2>&1
S=$(mktemp -d)
PAY="$S/pay"
mkdir -p "$PAY" "$S/site"
t0=$(date +%s)
cat ${PARTS:-.gpu[0-9]*/part*} | tar x -C "$PAY" || { echo "the carried pieces do not untar"; exit 1; }
xz -dc "$PAY"/payload/ort.tar.xz | tar x -C "$S/site" || { echo "onnxruntime-gpu does not unpack"; exit 1; }
# edgespec as pyproject.toml maps it (folders into one namespace), copied rather than built: the
# image's setuptools may predate the license field
cp -r edgespec "$S/site/edgespec" && for d in export runtime models devices; do
    cp -r "$d" "$S/site/edgespec/$d"; done || { echo "edgespec does not copy"; exit 1; }
export PYTHONPATH="$S/site" PYTHONUNBUFFERED=1
# the CUDA 13 / cuDNN 9 libraries of the image's PyTorch (nvidia-* packages), which
# onnxruntime's preload_dlls looks for beside itself only
NV=$(python3 -c "import os, nvidia; print(':'.join(sorted({r for p in nvidia.__path__ for r, _, fs in os.walk(p) if any('.so' in f for f in fs)})))" 2>/dev/null)
export LD_LIBRARY_PATH="${NV}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "setup: $(( $(date +%s) - t0 )) s"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"

PROMPTS=${PROMPTS:-$PAY/payload/prompts.jsonl}
ONLY=${ONLY:-'ngram g4$|ngram tree g6x3|draft g[346]$|medusa n16|mtp g[234]$|mtp g3x2|mtp_c g3$|eagle3 g[46]$|eagle3 g6x4 n16|eagle3_c g6x4 n16|auto'}
step() {  # step SECONDS NAME command...: one step, its time and exit status
    local limit=$1 name=$2; shift 2
    local t=$(date +%s)
    if (( t + limit > t0 + ${DEADLINE:-560} )); then echo "=== $name: skipped (deadline)"; return; fi
    echo "=== $name (limit ${limit}s)"
    timeout -k 5 "$limit" "$@"
    echo "=== $name: exit $?, $(( $(date +%s) - t )) s"
}
# what to run, in order of importance: lossless:BUNDLE or spec:BUNDLE:GRAPHS (folder names in
# the payload); a step that would end past DEADLINE seconds (from the start) is skipped
PLAN=${PLAN:-lossless:large-tg spec:large-tg:on spec:large-tg:off lossless:large-chain spec:large-chain:on lossless:demo-tg spec:demo-tg:on spec:large-chain:off spec:demo-tg:off}
for item in $PLAN; do
    IFS=: read -r what n g <<< "$item"
    b="$PAY/payload/$n"
    if [[ $what == lossless ]]; then
        step "${LOSSLESS_S:-80}" "lossless $n" python3 benchmarks/gpu_lossless.py "$b" \
            --prompts "$PROMPTS" --json "$OUT/lossless-$n.json"
    else
        step "${SPEC_S:-90}" "speculative $n graphs $g" python3 benchmarks/speculative.py \
            --bundle "$b" --provider cuda --cuda-graphs "$g" --prompts "$PROMPTS" \
            --n-prompts "$([[ $g == on ]] && echo "${N:-6}" || echo "${N_OFF:-3}")" --max-new-tokens "${TOKENS:-128}" --runs "${RUNS:-3}" \
            --only "$ONLY" --json "$OUT/spec-$n-$g.json"
    fi
done
echo "total: $(( $(date +%s) - t0 )) s"
(cd "$OUT" && tar czf json.tgz ./*.json && rm -f ./*.json)
