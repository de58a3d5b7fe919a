#!/usr/bin/env bash
# The test suite, offline, on CPU (slow tests included: they load the real packaged MiniLM and data).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh || exit 1
# Lint first (ruff comes from the test extra that install.sh installs): a failure stops here, before pytest.
lint_failed=0
python3 -m ruff check . || lint_failed=1
python3 -m ruff format --check . || lint_failed=1
if [ "$lint_failed" -ne 0 ]; then
  echo "lint failed: fix what ruff reports above (ruff format . rewrites formatting); pytest not run" >&2
  exit 1
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
python3 -m pytest -q -ra "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit "$rc"
