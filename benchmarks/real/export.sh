#!/usr/bin/env bash
# Export a real reference target (its GGUF file or HF folder; scripts/fetch_real.sh) with every
# drafter trained for it: n-gram lookup always, and each trained drafter found in
# demo/drafters-<model>/ (smollm2 or gemma3, from the source's name; docs/real-models.md),
# with VocabTrim / SlimSpec copies where that folder has calibration data; a drafter trained
# over K tokens (benchmarks/real/train.sh) is trimmed to them in both. From a GGUF file,
# --weights int4 computes with the file's own blocks. Later arguments override.
#
#   bash benchmarks/real/export.sh SOURCE OUT [extra edgespec export args...]
#
# e.g. `bash benchmarks/real/export.sh .cache/real/SmolLM2-135M-Instruct.Q4_1.gguf
# bundles/smol-int4 --weights int4`.
set -euo pipefail
SRC=$(realpath "${1:?usage: export.sh SOURCE OUT [export args...]}")
OUT=$(realpath -m "${2:?usage: export.sh SOURCE OUT [export args...]}")
shift 2
cd "$(dirname "$0")/../.."
ES=${EDGESPEC:-.venv/bin/edgespec}
case "$(basename "$SRC" | tr '[:upper:]' '[:lower:]')" in
  smollm2*) NAME=smollm2 ;;
  gemma-3*|gemma3*) NAME=gemma3 ;;
  *) echo "export.sh: $SRC is neither real reference model (smollm2, gemma-3)" >&2; exit 2 ;;
esac
D=demo/drafters-$NAME
ARGS=()
for k in medusa mtp eagle3; do
  [ -f "$D/$k/drafter.json" ] || continue
  ARGS+=(--drafter "$k=$D/$k")
  # one trained over K tokens (`train --train-vocab K`) runs with that head: trimmed to K
  K=$("${PYTHON:-.venv/bin/python}" -c 'import json, sys
print(json.load(open(sys.argv[1]))["options"].get("training", {}).get("train_vocab") or "")' \
      "$D/$k/drafter.json")
  [ -n "$K" ] && ARGS+=(--trim-vocab "$k=$K")
  if [ -f "$D/calibration.safetensors" ]; then
    ARGS+=(--drafter "${k}_c=$D/$k" --trim-vocab "${k}_c=${K:-${TRIM:-4096}}"
           --head-rank "${k}_c=64")
  fi
done
[ -f "$D/calibration.safetensors" ] && ARGS+=(--calibration "$D/calibration.safetensors")
echo "drafters for $NAME: ${ARGS[*]:-none trained yet (n-gram only)}"
"$ES" export "$SRC" -o "$OUT" ${ARGS[@]+"${ARGS[@]}"} --overwrite "$@"
