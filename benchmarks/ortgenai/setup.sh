#!/usr/bin/env bash
# Create a separate venv for the onnxruntime-genai baseline.
# Usage: bash benchmarks/ortgenai/setup.sh [VENV_DIR]   (default /tmp/edgespec-ortgenai-venv)
set -euo pipefail
VENV="${1:-/tmp/edgespec-ortgenai-venv}"
PY="$VENV/bin/python"

check() {
  "$PY" - <<'PY' 2>/dev/null
import onnxruntime_genai, onnxruntime, onnx, onnx_ir, torch, transformers, tokenizers, safetensors
assert transformers.__version__.startswith("5."), transformers.__version__
assert onnxruntime_genai.__version__.startswith("0.18"), onnxruntime_genai.__version__
import onnxruntime_genai.models.builder  # builder imports resolve
PY
}

if [ -x "$PY" ] && check; then
  echo "ortgenai venv already ready: $VENV"
  exit 0
fi

python3 -m venv "$VENV"
"$PY" -m pip install -q --upgrade pip
# CPU torch first (pinned; taken from local wheels) so nothing later pulls a CUDA build.
"$PY" -m pip install -q "torch==2.13.0"
"$PY" -m pip install -q "torch==2.13.0" "onnxruntime-genai>=0.18,<0.19" onnxruntime \
  "transformers>=5,<6" onnx onnx-ir safetensors tokenizers numpy tqdm
check
"$PY" -c 'import onnxruntime_genai as og, onnxruntime as ort, transformers, torch; print("og", og.__version__, "ort", ort.__version__, "transformers", transformers.__version__, "torch", torch.__version__)'
