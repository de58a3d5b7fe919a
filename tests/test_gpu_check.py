"""The GPU check script's whole path (model folders of the paper's families, probe -> rank -> train -> eval,
results file) on tiny shapes on CPU, so the script that runs on a lent GPU is known to work."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_tiny_on_cpu(tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "gpu_check.py"),
        "--tiny",
        "--device",
        "cpu",
        "--skip-tests",
        "--steps",
        "3",
        "--probe-steps",
        "2",
        "--batch-size",
        "8",
        "--eval-examples",
        "32",
        "--timing-batches",
        "2",
        "--work",
        str(tmp_path / "work"),
        "--out",
        str(tmp_path / "out"),
    ]
    # twice into the same work folder: a rerun of the check (after a time-out on a lent GPU) replaces its runs
    for _ in range(2):
        proc = subprocess.run(
            cmd,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
            env=dict(os.environ, OMP_NUM_THREADS="2"),
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "gpu_check_cpu_tiny.json").read_text())
    runs = [r for r in result["runs"] if "skipped" not in r]
    assert {r["model"] for r in runs} == {"deberta-v3-base-shape", "llama-3.1-8b-shape"}
    for r in runs:
        assert len(r["plan"]) == 2  # k = layers // 2 of 4
        assert r["step_ms"]["backward"] > 0
    llama = next(r for r in runs if r["model"].startswith("llama"))
    assert "time_to_first_token_ms_p50" in llama["eval"]
    assert (tmp_path / "out" / "gpu_check_cpu_tiny.md").is_file()
