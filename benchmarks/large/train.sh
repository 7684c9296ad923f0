#!/usr/bin/env bash
# Train the drafters shipped in demo/drafters-large for pyref-large (docs/large.md), on the
# 2-core CPU: self-distillation data, then eagle3 and mtp side by side (one thread each), then
# medusa; each warm-starts from the drafter trained for demo/pyref-target, the model pyref-large
# was depth up-scaled from (its layer l became layer 4l+3). At most 60 CPU minutes a drafter.
#
#   bash benchmarks/large/train.sh HF_DIR WORK_DIR [DST_DIR]
#
# HF_DIR: pyref-large; WORK_DIR: bundle, data and full-precision drafters; DST_DIR (default
# demo/drafters-large): the fp16 copies export.sh reads.
set -euo pipefail
HF=$(realpath "${1:?usage: train.sh HF_DIR WORK_DIR [DST_DIR]}")
WORK=$(realpath -m "${2:?usage: train.sh HF_DIR WORK_DIR [DST_DIR]}")
cd "$(dirname "$0")/../.."
DST=${3:-demo/drafters-large}
ES=${EDGESPEC:-.venv/bin/edgespec}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$WORK/drafters"

"$ES" export "$HF" -o "$WORK/plain" --overwrite
# prompts cut from the Python standard library, without the files held out of the corpus
STDLIB=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
mapfile -t HELD < <("$PY" -c 'import json, sys
for p in json.load(open(sys.argv[1]))["held_out"]: print("--exclude=" + p)' "$HF/corpus.json")
"$ES" distill "$WORK/plain" -o "$WORK/distill.safetensors" --sources "$STDLIB" \
    --exclude '*test*/*' --exclude 'site-packages/*' --exclude 'dist-packages/*' "${HELD[@]}" \
    --n 1536 --prompt-tokens 64 --max-new-tokens 128 --seed 0 --threads 2

DATA="$WORK/distill.safetensors"
OMP_NUM_THREADS=1 "$ES" train eagle3 "$HF" -o "$WORK/drafters/eagle3" --data "$DATA" \
    --init demo/drafters/eagle3 --feature-layers 7,15,19 --lr 1e-3 --steps 5000 --minutes 40 &
OMP_NUM_THREADS=1 "$ES" train mtp "$HF" -o "$WORK/drafters/mtp" --data "$DATA" \
    --init demo/drafters/mtp --lr 1e-3 --steps 5000 --minutes 40 &
wait
"$ES" train medusa "$HF" -o "$WORK/drafters/medusa" --data "$DATA" \
    --init demo/drafters/medusa --lr 1e-3 --steps 3000 --minutes 20

"$PY" demo/make_demo_drafters.py "$WORK/drafters" "$DATA" "$DST"
# SlimSpec calibration for export.sh's compressed heads: the first 256 sequences (~200 KB)
"$PY" - "$DATA" "$DST/calibration.safetensors" <<'PYEOF'
import sys
from edgespec.export.train.distill import DistillData, load_data, save_data
d, n = load_data(sys.argv[1]), 256
save_data(DistillData(d.tokens[: d.offsets[n]], d.offsets[: n + 1], d.prompt_lengths[:n],
                      d.meta), sys.argv[2])
PYEOF
