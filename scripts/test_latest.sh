#!/usr/bin/env bash
# The test suite against the newest release of every dependency (not constraints.txt): run it before
# refreshing the constraints (scripts/constraints.sh), or whenever a dependency releases. Prints the
# versions it tested.
set -uo pipefail
cd "$(dirname "$0")/.."
ACTLORA_DEPS=latest bash scripts/test.sh "$@"
rc=$?
echo "tested against:"
"${PYTHON:-python3}" -m pip freeze --exclude-editable | grep -iE '^(torch|transformers|peft|datasets|typer|rich|pydantic|numpy|scipy|pandas|pyarrow|pytest|ruff|bitsandbytes|scikit-learn|matplotlib|safetensors|tokenizers|huggingface.hub)=='
exit "$rc"
