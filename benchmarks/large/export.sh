#!/usr/bin/env bash
# Export pyref-large (shared/models) with every drafter trained for it (demo/drafters-large):
# n-gram lookup, a draft model (default: the reference target, its sibling, in int4 with its
# head trimmed to the 2,048 most generated tokens: a draft token then reads ~1/8 of the fp32
# draft's bytes), medusa, mtp and eagle3, and compressed copies of the three trained heads
# (medusa_c, mtp_c, eagle3_c: VocabTrim K=1024 plus SlimSpec rank 64, distilled on the shipped
# calibration data). Later arguments override (e.g. --draft-weights fp32).
#
#   bash benchmarks/large/export.sh HF_DIR OUT [DRAFT_DIR] [extra edgespec export args...]
#
# e.g. `bash benchmarks/large/export.sh ../shared/models/pyref-large bundles/large` or, for int4
# weights, `... bundles/large-int4 demo/pyref-target --weights int4`.
set -euo pipefail
HF=$(realpath "${1:?usage: export.sh HF_DIR OUT [DRAFT_DIR] [export args...]}")
OUT=$(realpath -m "${2:?usage: export.sh HF_DIR OUT [DRAFT_DIR] [export args...]}")
DRAFT=$(realpath "${3:-$(dirname "$0")/../../demo/pyref-target}")
shift $(( $# < 3 ? $# : 3 ))
cd "$(dirname "$0")/../.."
ES=${EDGESPEC:-.venv/bin/edgespec}
L=demo/drafters-large
ARGS=(--draft-model "$DRAFT" --draft-weights int4 --trim-vocab draft_model=2048
      --calibration "$L/calibration.safetensors")
for k in medusa mtp eagle3; do
  ARGS+=(--drafter "$k=$L/$k" --drafter "${k}_c=$L/$k" --trim-vocab "${k}_c=1024"
         --head-rank "${k}_c=64")
done
"$ES" export "$HF" -o "$OUT" "${ARGS[@]}" --overwrite "$@"
