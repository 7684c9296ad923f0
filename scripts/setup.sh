#!/usr/bin/env bash
# Create .venv with edgespec (editable) and everything to export, run and test it.
# torch is pinned and installed first: an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check "setuptools>=68" wheel
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[cpu,export,test]"
echo "edgespec installed in .venv ($(.venv/bin/python -c 'import edgespec; print(edgespec.__version__)'))"
