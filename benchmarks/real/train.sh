#!/usr/bin/env bash
# Train the drafters shipped in demo/drafters-<model>/ for a real reference target
# (docs/real-models.md), on the 2-core CPU:
#   1. the int4 bundle of the GGUF file (the target the drafters serve), no drafters;
#   2. self-distillation data from it, two shards side by side (one thread each): answers to
#      chat requests made from standard-library docstrings (benchmarks/real/chat_requests.py,
#      the held-out benchmark modules skipped) and continuations of standard-library code
#      (the held-out files skipped); merged into WORK/distill.safetensors;
#   3. eagle3 and mtp side by side (one thread each, MINUTES), then medusa (MEDUSA_MINUTES),
#      each trained over the TRAIN_VOCAB tokens VocabTrim keeps (so export trims it to the
#      same tokens: export.sh's TRIM);
#   4. fp16 copies, token counts and a 256-sequence calibration file in DST.
#
#   bash benchmarks/real/train.sh GGUF HF_DIR WORK [DST]
#
# e.g. `bash benchmarks/real/train.sh .cache/real/SmolLM2-135M-Instruct.Q4_1.gguf
# .cache/real/smollm2-135m-instruct work/smol`. Knobs (environment): N_CHAT (260), N_CODE
# (450), NEW_CHAT (192), NEW_CODE (128), MINUTES (55), MEDUSA_MINUTES (15), TRAIN_VOCAB
# (4096), BATCH (8).
set -euo pipefail
GGUF=$(realpath "${1:?usage: train.sh GGUF HF_DIR WORK [DST]}")
HF=$(realpath "${2:?usage: train.sh GGUF HF_DIR WORK [DST]}")
WORK=$(realpath -m "${3:?usage: train.sh GGUF HF_DIR WORK [DST]}")
cd "$(dirname "$0")/../.."
case "$(basename "$GGUF" | tr '[:upper:]' '[:lower:]')" in
  smollm2*) NAME=smollm2 ;;
  gemma-3*|gemma3*) NAME=gemma3 ;;
  *) echo "train.sh: $GGUF is neither real reference model (smollm2, gemma-3)" >&2; exit 2 ;;
esac
DST=${4:-demo/drafters-$NAME}
ES=${EDGESPEC:-.venv/bin/edgespec}
PY=${PYTHON:-.venv/bin/python}
SHARED=${SHARED:-../shared}
mkdir -p "$WORK/drafters"

[ -f "$WORK/int4/manifest.json" ] || "$ES" export "$GGUF" -o "$WORK/int4" --weights int4 --overwrite

if [ ! -f "$WORK/distill.safetensors" ]; then
  "$PY" benchmarks/real/chat_requests.py "$WORK/chat_requests.jsonl" --n "${N_CHAT:-260}" \
      --holdout "$SHARED/data/chat_prompts.jsonl" "$SHARED/data/prompts.jsonl"
  STDLIB=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
  mapfile -t HELD < <("$PY" -c 'import json, sys
for p in json.load(open(sys.argv[1]))["held_out"]: print("--exclude=" + p)' \
      "$SHARED/models/pyref-target/corpus.json")
  "$ES" distill "$WORK/int4" -o "$WORK/chat.safetensors" --prompts "$WORK/chat_requests.jsonl" \
      --n "${N_CHAT:-260}" --max-new-tokens "${NEW_CHAT:-192}" --seed 0 --threads 1 &
  "$ES" distill "$WORK/int4" -o "$WORK/code.safetensors" --sources "$STDLIB" \
      --exclude '*test*/*' --exclude 'site-packages/*' --exclude 'dist-packages/*' "${HELD[@]}" \
      --n "${N_CODE:-450}" --prompt-tokens 64 --max-new-tokens "${NEW_CODE:-128}" --seed 0 \
      --threads 1 &
  wait %1; wait %2  # either failing stops the script (set -e)
  "$PY" - "$WORK" <<'PYEOF'
import sys
from edgespec.export.train.distill import concat_data, load_data, save_data
w = sys.argv[1]
save_data(concat_data([load_data(f"{w}/chat.safetensors"), load_data(f"{w}/code.safetensors")]),
          f"{w}/distill.safetensors")
PYEOF
fi

DATA="$WORK/distill.safetensors"
train() {  # KIND MINUTES
  "$ES" train "$1" "$HF" -o "$WORK/drafters/$1" --data "$DATA" \
      --train-vocab "${TRAIN_VOCAB:-4096}" --lr 1e-3 --batch "${BATCH:-8}" --steps 20000 \
      --minutes "$2"
}
# the two layer drafters side by side (one thread each), then medusa's heads (cheap: no layer)
OMP_NUM_THREADS=1 train eagle3 "${MINUTES:-55}" &
OMP_NUM_THREADS=1 train mtp "${MINUTES:-55}" &
wait %1; wait %2
train medusa "${MEDUSA_MINUTES:-15}"

"$PY" demo/make_demo_drafters.py "$WORK/drafters" "$DATA" "$DST"
# SlimSpec calibration for export.sh's compressed heads: 256 sequences spread over both shards
"$PY" - "$DATA" "$DST/calibration.safetensors" <<'PYEOF'
import sys
import numpy as np
from edgespec.export.train.distill import DistillData, load_data, save_data
d = load_data(sys.argv[1])
idx = np.unique(np.linspace(0, len(d) - 1, min(256, len(d))).astype(int))
seqs = [d.sequence(i) for i in idx]
save_data(DistillData(np.concatenate(seqs), np.cumsum([0] + [len(s) for s in seqs]),
                      d.prompt_lengths[idx], d.meta), sys.argv[2])
PYEOF
