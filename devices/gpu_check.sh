#!/usr/bin/env bash
# GPU check (issue 3): on a machine with an NVIDIA GPU and onnxruntime-gpu, check that greedy
# decoding on CUDA (K/V buffers on the device) reproduces CUDA's own autoregressive tokens with
# every drafter, with CUDA graphs per verify shape and without, then bench plain and
# speculative decoding there both ways (cost curve, tok/s, tau, device memory).
#
#   bash devices/gpu_check.sh                 # exports the demo bundle first (needs torch)
#   BUNDLE=bundles/demo bash devices/gpu_check.sh   # a bundle exported elsewhere
#   WEIGHTS=int4-fp16 bash devices/gpu_check.sh   # the demo exported in int4-fp16 (default fp16)
#   VERIFY=chain bash devices/gpu_check.sh    # GQA's own causal mask, chains only (default
#                                             # tree-gpu: trees, the bias applied by MatMul)
#
# Env: PY (python, default .venv/bin/python), OUT (default gpu-check), LIMIT prompts (8),
# TOKENS per prompt (64), RUNS (3). About 4-5 minutes on the demo bundle. Bundles with static
# shapes (the export default, what CUDA graphs need) run both ways; others without graphs.
# The defaults are what onnxruntime's CUDA GroupQueryAttention runs (its source: float16 /
# bfloat16 kernels only, and no attention_bias): --weights fp16 and --verify tree-gpu (GQA
# writes K/V, MatMul + Softmax attend under the tree bias) or chain. A --verify tree bundle is
# refused on CUDA at load; an fp32 one runs its attention on the CPU (a warning).
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${OUT:-gpu-check}
LIMIT=${LIMIT:-8}
TOKENS=${TOKENS:-64}
RUNS=${RUNS:-3}
ES=("$PY" -m edgespec.cli)
PROMPTS=$("$PY" -c "from importlib import resources; print(resources.files('edgespec.devices') / 'prompts.jsonl')")
mkdir -p "$OUT"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
"$PY" - <<'PYEOF'
import onnxruntime as ort
have = ort.get_available_providers()
print("onnxruntime", ort.__version__, have)
if "CUDAExecutionProvider" not in have:
    raise SystemExit("onnxruntime here has no CUDAExecutionProvider: pip install onnxruntime-gpu")
PYEOF

if [[ -z "${BUNDLE:-}" ]]; then
    BUNDLE="$OUT/bundle"
    "${ES[@]}" export --demo -o "$BUNDLE" --weights "${WEIGHTS:-fp16}" --shapes static \
        --verify "${VERIFY:-tree-gpu}" --overwrite  # parity vs torch on the CPU
fi
TREES=$("$PY" -c "from edgespec.runtime.model import Model; print('4,8,16,32' if Model('$BUNDLE').verifies_trees else '')")
GRAPHS=$("$PY" -c "from edgespec.manifest import load_manifest as m; from edgespec.runtime.graph_capture import static_graph as s; print('off on' if s(m('$BUNDLE').target) else 'off')")

# greedy parity, every drafter: CUDA with device K/V against the CPU with host K/V
drafters=$("$PY" -c "from edgespec.manifest import load_manifest as m; print(' '.join(['none', *m('$BUNDLE').drafters]))")
for d in $drafters; do
    "${ES[@]}" eval "$BUNDLE" --prompts "$PROMPTS" --limit "$LIMIT" --max-new-tokens "$TOKENS" \
        --drafter "$d" --provider cpu --out "$OUT/eval-cpu-$d.jsonl"
    for g in $GRAPHS; do
        "${ES[@]}" eval "$BUNDLE" --prompts "$PROMPTS" --limit "$LIMIT" \
            --max-new-tokens "$TOKENS" --drafter "$d" --provider cuda --cuda-graphs "$g" \
            --out "$OUT/eval-cuda-graphs-$g-$d.jsonl"
    done
done
"$PY" - "$OUT" "$GRAPHS" $drafters <<'PYEOF'
import json, sys
out, graphs, names = sys.argv[1], sys.argv[2].split(), sys.argv[3:]
def rows(name):
    return [json.loads(l) for l in open(f"{out}/eval-{name}.jsonl")]
# must hold: every drafter on CUDA, with and without CUDA graphs, reproduces CUDA's own greedy
# decoding without graphs (lossless); reported: CUDA against the CPU (other kernels: a near-tie
# may flip a token, fp16 more often than fp32)
bad = 0
ref = rows("cuda-graphs-off-none")
for d in names:
    cpu = rows(f"cpu-{d}")
    for g in graphs:
        cuda = rows(f"cuda-graphs-{g}-{d}")
        own = sum(a["output_ids"] == b["output_ids"] for a, b in zip(ref, cuda))
        same = sum(a["output_ids"] == b["output_ids"] for a, b in zip(cpu, cuda))
        bad += own != len(ref)
        print(f"{d}, CUDA graphs {g}: {own}/{len(ref)} prompts equal CUDA's autoregressive "
              f"output (must be all); {same}/{len(cpu)} equal the CPU's")
sys.exit(1 if bad else 0)
PYEOF

for g in $GRAPHS; do
    "${ES[@]}" bench "$BUNDLE" --provider cuda --cuda-graphs "$g" --drafter mtp \
        --gammas 1,2,3,4 --runs "$RUNS" --limit "$LIMIT" --max-new-tokens "$TOKENS" \
        -o "$OUT/bench-mtp-graphs-$g"
    "${ES[@]}" bench "$BUNDLE" --provider cuda --cuda-graphs "$g" --drafter eagle3 \
        --gammas 2,3,4,5 --tree-sizes "$TREES" --runs "$RUNS" --limit "$LIMIT" \
        --max-new-tokens "$TOKENS" -o "$OUT/bench-eagle3-graphs-$g"
done
echo "Results in $OUT/ (bench-*-graphs-off: without CUDA graphs, -on: with them)"
