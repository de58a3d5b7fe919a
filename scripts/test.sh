#!/usr/bin/env bash
# The test suite, offline, on CPU (slow tests included: they load the real packaged MiniLM and data).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh || exit 1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
python3 -m pytest -q -ra "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit "$rc"
