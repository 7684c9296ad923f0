#!/usr/bin/env bash
# Export a local HF model folder to an onnxruntime-genai model folder (CPU EP).
# Usage: bash benchmarks/ortgenai/build.sh HF_DIR [PRECISION] [OUT_DIR] [VENV_DIR]
#   HF_DIR:    the HF model folder (required)
#   PRECISION: fp32 (default) | int4 | int8
#   OUT_DIR:   default /tmp/edgespec-ortgenai-models/<basename of HF_DIR>-$PRECISION
#   VENV_DIR:  default /tmp/edgespec-ortgenai-venv (setup.sh)
set -euo pipefail
if [ $# -lt 1 ] || [ ! -f "$1/config.json" ]; then
  echo "usage: $0 HF_DIR [PRECISION] [OUT_DIR] [VENV_DIR]  (HF_DIR must hold config.json)" >&2
  exit 2
fi
HF_DIR="$(cd "$1" && pwd)"
PREC="${2:-fp32}"
OUT="${3:-/tmp/edgespec-ortgenai-models/$(basename "$HF_DIR")-$PREC}"
VENV="${4:-/tmp/edgespec-ortgenai-venv}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
CACHE="$(mktemp -d)"
trap 'rm -rf "$CACHE"' EXIT
"$VENV/bin/python" "$(dirname "$0")/builder.py" \
  -i "$HF_DIR" -o "$OUT" -p "$PREC" -e cpu -c "$CACHE"
echo "genai model folder: $OUT"
