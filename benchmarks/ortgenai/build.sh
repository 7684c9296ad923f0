#!/usr/bin/env bash
# Export the local HF reference model to an onnxruntime-genai model folder (CPU EP).
# Usage: bash benchmarks/ortgenai/build.sh [PRECISION] [OUT_DIR] [HF_DIR] [VENV_DIR]
#   PRECISION: fp32 (default) | int4 | int8
#   OUT_DIR:   default /tmp/edgespec-ortgenai-models/pyref-target-$PRECISION
set -euo pipefail
PREC="${1:-fp32}"
OUT="${2:-/tmp/edgespec-ortgenai-models/pyref-target-$PREC}"
HF_DIR="${3:-/work/shared/models/pyref-target}"
VENV="${4:-/tmp/edgespec-ortgenai-venv}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
CACHE="$(mktemp -d)"
trap 'rm -rf "$CACHE"' EXIT
"$VENV/bin/python" -m onnxruntime_genai.models.builder \
  -i "$HF_DIR" -o "$OUT" -p "$PREC" -e cpu -c "$CACHE"
echo "genai model folder: $OUT"
