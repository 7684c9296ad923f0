#!/usr/bin/env bash
# Here, before a GPU session: pack onnxruntime-gpu and the bundles to check into one tar, split
# into pieces that fit one device call each, one folder per piece (.gpu00/, .gpu01/, ...,
# ignored by .gitignore). Then call the device once per folder, back to back (the machine goes
# back after 30 s idle, and the pieces with it), each call naming only that folder in `carry`,
# the last with `bash devices/gpu_session.sh`.
#
#   bash devices/gpu_pack.sh WORK BUNDLE [BUNDLE ...]
#
# WORK: a scratch folder (the wheel is downloaded there once). The wheel's CUDA provider is
# 284 MB of the 301 unpacked; xz -9e takes 255.6 MB down to about 2/3 (gzip in the wheel), and
# what the runtime does not load (TensorRT's provider, the C API library, tools, quantization)
# stays behind. A call carries 64 MiB with the tracked tree (34 MB, 31 of them demo/), so
# PIECE_MB defaults to what is left: 30, or 7 calls for onnxruntime alone. The 2026-11-30 run
# untracked demo/ for the session (`git rm -r -q --cached demo` and /demo/ in .gitignore;
# back with `git reset -q demo`) to carry 58 MiB a call: 7 calls for 400 MB.
set -euo pipefail
WORK=$(realpath -m "${1:?usage: gpu_pack.sh WORK BUNDLE...}"); shift
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VERSION=${ORT_VERSION:-1.31.1}
mkdir -p "$WORK/payload"
if [[ ! -f "$WORK/ort.tar.xz" ]]; then
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 -d "$WORK" "onnxruntime-gpu==$VERSION"
    rm -rf "$WORK/x" && mkdir "$WORK/x"
    (cd "$WORK/x" && unzip -q "$WORK"/onnxruntime_gpu-"$VERSION"-*.whl &&
     rm -rf onnxruntime/capi/libonnxruntime.so.* onnxruntime/capi/libonnxruntime_providers_tensorrt.so \
        onnxruntime/tools onnxruntime/transformers onnxruntime/quantization &&
     tar cf - onnxruntime onnxruntime_gpu-*.dist-info | xz -9e -T0 > "$WORK/ort.tar.xz.tmp")
    mv "$WORK/ort.tar.xz.tmp" "$WORK/ort.tar.xz"
fi
cp "$WORK/ort.tar.xz" "$WORK/payload/"
cp "${PROMPTS:-$ROOT/../shared/data/prompts.jsonl}" "$WORK/payload/prompts.jsonl"
for b in "$@"; do
    rm -rf "$WORK/payload/$(basename "$b")" && cp -r "$b" "$WORK/payload/"
done
cd "$ROOT"
# .gitignore names /.gpu[0-9]*/: the device keeps ignored folders between calls (folders
# ignored only through .git/info/exclude were gone at the next call)
rm -rf .gpu[0-9]* "$WORK"/part*
TREE=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
PIECE_MB=${PIECE_MB:-$(( (64 * 1048576 - TREE) / 1048576 - 2 ))}
tar cf - -C "$WORK" payload | split -b "${PIECE_MB}M" -d - "$WORK/part"
i=0
for p in "$WORK"/part*; do
    d=$(printf ".gpu%02d" $i); mkdir -p "$d"; mv "$p" "$d/"; i=$((i + 1))
done
ls -d .gpu[0-9]* | tr '\n' ' '; echo "($i calls of ${PIECE_MB} MiB; tracked tree $TREE bytes)"
