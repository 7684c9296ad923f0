#!/usr/bin/env bash
# llama.cpp baseline: fetch the source (vendored in the llama-cpp-python sdist), build the CPU
# tools, make a converter venv, convert each HF model folder given to GGUF f32 and f16. Each step
# is skipped when its output is already there.
# Usage: bash benchmarks/llamacpp/setup.sh [--dir DIR] [--venv VENV] [--types f32,f16] HF_DIR [HF_DIR ...]
#   HF_DIR  one or more HF model folders (required; e.g. the target and its draft model). Each
#           becomes DIR/<basename of HF_DIR>-<type>.gguf, e.g. pyref-large-f32.gguf.
#   --dir   default /tmp/edgespec-llamacpp        (src/, build/bin/, the GGUFs)
#   --venv  default /tmp/edgespec-llamacpp-venv   (converter: torch, transformers, gguf-py)
#   --types default f32,f16                       (converter --outtype values)
set -euo pipefail
DIR_ARG=/tmp/edgespec-llamacpp
VENV=/tmp/edgespec-llamacpp-venv
TYPES=f32,f16
HFS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) DIR_ARG="$2"; shift 2 ;;
    --venv) VENV="$2"; shift 2 ;;
    --types) TYPES="$2"; shift 2 ;;
    -h|--help) sed -n 2,10p "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) HFS+=("$1"); shift ;;
  esac
done
if [ ${#HFS[@]} -eq 0 ]; then
  echo "usage: $0 [--dir DIR] [--venv VENV] [--types f32,f16] HF_DIR [HF_DIR ...]" >&2
  exit 2
fi
for hf in "${HFS[@]}"; do
  [ -f "$hf/config.json" ] || { echo "$hf: no config.json (not an HF model folder)" >&2; exit 2; }
done
DIR="$(mkdir -p "$DIR_ARG" && cd "$DIR_ARG" && pwd)"
VER="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"   # its sdist vendors llama.cpp commit 0c1e570
SRC="$DIR/src/llama_cpp_python-$VER/vendor/llama.cpp"
BIN="$DIR/build/bin"
PY="$VENV/bin/python"
# llama-completion/-bench/-tokenize: plain decoding (decode_bench.py);
# llama-speculative-simple (draft model and ngram-* --spec-type) and llama-lookup: spec_bench.py
TARGETS=(llama-completion llama-bench llama-tokenize llama-speculative-simple llama-lookup)

# 1. source
if [ ! -f "$SRC/convert_hf_to_gguf.py" ]; then
  mkdir -p "$DIR/src"
  pip download --no-deps --no-binary :all: "llama-cpp-python==$VER" -d "$DIR/src"
  tar -xzf "$DIR/src/llama_cpp_python-$VER.tar.gz" -C "$DIR/src"
fi
echo "llama-cpp-python $VER sdist, vendor/llama.cpp" > "$DIR/SOURCE.txt"

# The converter knows BPE pre-tokenizers by a hash of how they split a test string; this
# tokenizer (HF ByteLevel, use_regex=True, i.e. the GPT-2 split regex) is not in its table, and
# convert_hf_to_gguf_update.py, the documented fix, needs the model hub. Map its hash to "gpt-2"
# in our copy of the source (a changed tokenizer gives another hash and fails loudly).
python3 - "$SRC/conversion/base.py" <<'PYEOF'
import sys
path, h = sys.argv[1], "69adfcc378a6d9456817ab9c7f0dfa248ab4621211d0582ffb85dd49acf59b38"
s = open(path).read()
anchor = '        if res is None:\n            logger.warning("\\n")'
if h not in s:
    assert s.count(anchor) == 1, "converter layout changed: patch get_vocab_base_pre by hand"
    s = s.replace(anchor, f'        if chkhsh == "{h}":\n            # edgespec pyref tokenizer: ByteLevel(use_regex=True) = GPT-2\n'
                          f'            res = "gpt-2"\n' + anchor)
    open(path, "w").write(s)
PYEOF

# 2. build (CPU only, tuned for this machine)
missing=0
for t in "${TARGETS[@]}"; do [ -x "$BIN/$t" ] || missing=1; done
if [ "$missing" = 1 ]; then
  cmake -S "$SRC" -B "$DIR/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF
  cmake --build "$DIR/build" --target "${TARGETS[@]}" -j2
fi
"$BIN/llama-completion" --version

# 3. converter venv: CPU torch first (pinned; local wheel) so nothing pulls a CUDA build
if ! { [ -x "$PY" ] && "$PY" -c 'import torch, transformers, gguf, sentencepiece, tokenizers' 2>/dev/null; }; then
  python3 -m venv "$VENV"
  "$PY" -m pip install -q "torch==2.13.0"
  "$PY" -m pip install -q "torch==2.13.0" "numpy>=2.2.6" "sentencepiece>=0.1.98,<0.3.0" \
    "transformers==4.57.6" "protobuf>=4.21.0,<5.0.0" safetensors tokenizers
  "$PY" -m pip install -q -e "$SRC/gguf-py"
fi

# 4. convert: DIR/<model folder name>-<type>.gguf
for hf in "${HFS[@]}"; do
  name="$(basename "$(cd "$hf" && pwd)")"
  for t in ${TYPES//,/ }; do
    out="$DIR/$name-$t.gguf"
    if [ ! -f "$out" ]; then
      HF_HUB_OFFLINE=1 "$PY" "$SRC/convert_hf_to_gguf.py" "$hf" --outtype "$t" --outfile "$out.tmp"
      mv "$out.tmp" "$out"
    fi
  done
done
ls -l "$DIR"/*.gguf
