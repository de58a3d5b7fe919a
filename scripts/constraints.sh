#!/usr/bin/env bash
# Rewrites constraints.txt: the newest release of every dependency (test and bench extras included) that
# resolves today, pinned. Run it, then `bash scripts/test.sh`, and commit both when the suite passes.
# torch is left out: install.sh keeps a machine's own torch (a GPU server's CUDA build) or installs the pinned
# CPU build itself.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
report=$(mktemp)
trap 'rm -f "$report"' EXIT
"$PY" -m pip install -q --dry-run --ignore-installed --report "$report" -e ".[test,bench,smollm2]" "torch==2.13.0"
"$PY" - "$report" > constraints.txt <<'PYEOF'
import json, sys, time
report = json.load(open(sys.argv[1]))
print("# Tested versions of every dependency, written by scripts/constraints.sh on", time.strftime("%Y-%m-%d") + ".")
print("# install.sh and test.sh install with -c constraints.txt; scripts/test_latest.sh tests the newest releases.")
skip = {"actlora", "torch"}
pins = sorted((m["name"].lower(), m["version"]) for m in (i["metadata"] for i in report["install"]))
for name, version in pins:
    if name not in skip:
        print(f"{name}=={version}")
PYEOF
echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) pins)"
