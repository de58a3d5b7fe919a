"""What every benchmark shares: the device sync, the machine and its label, library versions, the code
measured, other processes' share of the CPU, short ``run_train`` runs and their step log, and writing the
result as ``<out>/<benchmark>_<machine>.json`` and ``.md``.

Imported as ``benchmarks._common`` (``python -m benchmarks.x``) or ``_common`` (``python benchmarks/x.py``,
which puts benchmarks/ itself on the path).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from actlora_cli.artifacts import file_hash

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
LIBRARIES = ("torch", "transformers", "peft")


def sync(device: torch.device | None = None) -> None:
    """Wait for the GPU's queued work (a no-op on CPU); ``None``: the current CUDA device, if any."""
    if device is None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    elif device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def machine_label(info: dict[str, Any]) -> str:
    """The machine in result file names: ``cpu-<logical cores>core``, or ``gpu-<name>`` (e.g. gpu-h200)."""
    if "gpu" in info:
        return "gpu-" + "-".join(info["gpu"].lower().replace("nvidia", "").split())
    return f"cpu-{info['cpu_count']}core"


def versions(*extra: str) -> dict[str, str | None]:
    """Installed versions of torch, transformers, peft and ``extra`` (None where one is not installed)."""
    found: dict[str, str | None] = {}
    for name in (*LIBRARIES, *extra):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def code_identity(*modules) -> dict[str, Any]:
    """The code measured: commit, package files changed since it, and hashes of ``modules``' files (the ones
    the benchmark is about)."""

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, check=True, cwd=ROOT).stdout
        except (OSError, subprocess.CalledProcessError):
            return None

    status = git("status", "--porcelain", "--", "actlora_cli")
    return {
        "commit": (git("rev-parse", "HEAD") or "").strip() or None,
        "uncommitted": None if status is None else [line[3:] for line in status.splitlines()],
        "sha256_16": {
            str(Path(m.__file__).resolve().relative_to(ROOT)): file_hash(Path(m.__file__)) for m in modules
        },
    }


def interleaved(variants: Sequence, rep: int) -> list:
    """The variants' order in round ``rep``: as given, reversed every other round (A B C, C B A, ...), so a
    slow spell of a shared machine, or a drift, hits them alike."""
    return list(variants) if rep % 2 == 0 else list(reversed(variants))


def train(cfg) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``run_train(cfg)`` in a fresh ``cfg.run_dir``: its summary and its per-step log (train_log.jsonl)."""
    from actlora_cli.train import run_train

    shutil.rmtree(cfg.run_dir, ignore_errors=True)
    summary = run_train(cfg)
    log = [json.loads(line) for line in (cfg.run_dir / "train_log.jsonl").read_text().splitlines()]
    return summary, log


def plan_run_config(
    path: str, sets: Sequence[str], layers: list[int], folder: Path, *, steps: int, batch_size: int,
    eval_examples: int,
):  # fmt: skip
    """The config of a short ``run_train`` of ``steps`` optimizer steps with LoRA on ``layers``: one epoch of
    the task's first ``steps x batch_size`` training examples (so runs of different plans see the same batches
    in the same order), ``eval_examples`` validation examples for its epoch-end evaluation. ``sets`` are
    ``--set`` overrides; the plan and the run's length win over them."""
    from actlora_cli.config import CLEAR, load_config

    return load_config(
        path,
        list(sets),
        {
            "output_dir": str(folder),
            "rank.layers": list(layers),
            "rank.k": CLEAR,
            "rank.tau": CLEAR,
            "task.max_train_examples": steps * batch_size,
            "task.max_eval_examples": eval_examples,
            "train.batch_size": batch_size,
            "train.epochs": 1,
            "train.max_steps": steps,
            "train.save_every": CLEAR,
        },
    )


def step_ms(record: dict[str, Any]) -> float:
    """One train_log.jsonl line's step time: forward + backward + optimizer."""
    return record["forward_ms"] + record["backward_ms"] + record["optimizer_ms"]


def add_output_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--machine", default=None, help="label in the file names (default: cpu-<N>core or gpu-<name>)"
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="output folder (default benchmarks/results)"
    )


def command() -> str:
    """The command line that ran, with the script's path relative to the repository where it lies in it."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(ROOT)
    except ValueError:
        pass
    return shlex.join([Path(sys.executable).name, str(script), *sys.argv[1:]])


def header(
    benchmark: str, device: torch.device, machine: str | None, code=(), extra_versions: Sequence[str] = ()
) -> dict[str, Any]:
    """The head of a result file: benchmark, machine (label and details), versions, date, command, code."""
    info = machine_info(device)
    return {
        "benchmark": benchmark,
        "machine_label": machine or machine_label(info),
        "machine": info,
        "versions": versions(*extra_versions),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command(),
        "code": code_identity(*code),
    }


def markdown_header(title: str, doc: dict[str, Any]) -> list[str]:
    """Title, command, machine, versions and code of a result's Markdown file."""
    m, c = doc["machine"], doc["code"]
    gpu = f", GPU {m['gpu']}" if "gpu" in m else ""
    changed = ", ".join(c["uncommitted"] or []) or "none"
    return [
        f"# {title} ({doc['machine_label']}, {doc['date'][:10]})",
        "",
        f"`{doc['command']}`",
        "",
        f"- {m['cpu']}, {m['cpu_count']} logical cores, torch threads {m['torch_threads']}, device "
        f"`{m['device']}`{gpu}; Python {m['python']}, {m['platform']}",
        "- " + ", ".join(f"{k} {v}" for k, v in doc["versions"].items() if v),
        f"- code: commit {c['commit']}, uncommitted package changes: {changed}",
        "",
    ]


def write_result(out: Path, doc: dict[str, Any], markdown: str) -> Path:
    """``<out>/<benchmark>_<machine label>.json`` and ``.md``; prints the Markdown. Returns the stem."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{doc['benchmark']}_{doc['machine_label']}"
    Path(f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    Path(f"{stem}.md").write_text(markdown if markdown.endswith("\n") else markdown + "\n")
    print(markdown)
    print(f"wrote {stem}.json and {stem}.md")
    return stem
