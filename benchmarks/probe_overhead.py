"""Probe overhead: the probe stage's scoring loop against a plain inference forward over the same batches.

DESIGN.md section 5: "Hooks add reductions only: the probe's throughput should be that of a plain inference
forward." This measures that claim on the offline default (packaged MiniLM, task ``movies``) for every probe
site, and writes ``<out>/probe_overhead_<machine>.json`` and ``.md``. Target: ratio of medians <= 1.05.

The S batches are collated once, so both variants see identical tensors and collation is not timed. The two
variants are interleaved ABBA (plain, probe, probe, plain, ...) after a warm-up, because the machine may be
shared: a slow spell then hits both variants rather than one.

    python benchmarks/probe_overhead.py                       # S=20, batch 32, 7 reps, all sites
    python benchmarks/probe_overhead.py --steps 10 --reps 3 --sites post_attn
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import transformers

from actlora_cli.config import load_config
from actlora_cli.data import collate, encode, load_examples, task_spec
from actlora_cli.probe import Loaded, load_for, probe_batches
from actlora_cli.scoring.activation import _Accumulator, activation_norms, probe_hooks

SITES = ("post_attn", "pre_attn", "block_out")
TARGET = 1.05
NOISY = 1.10  # slowest / fastest plain run above this: the machine was disturbed during the site


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20, help="S: probe batches per timed run (default 20)")
    p.add_argument("--batch-size", type=int, default=32, help="examples per batch (default 32)")
    p.add_argument("--reps", type=int, default=7, help="timed runs of each variant per site (default 7)")
    p.add_argument("--sites", nargs="+", choices=SITES, default=list(SITES), help="probe sites (default: all)")
    p.add_argument("--model", default="packaged:all-MiniLM-L6-v2", help="model.name (default: packaged MiniLM)")
    p.add_argument("--task", default="movies", help="task.name (default: movies)")
    p.add_argument("--isolate-reps", type=int, default=3, help="runs timing the hook reductions alone (0: skip)")
    p.add_argument("--seed", type=int, default=0, help="probe.seed, which picks the batches (default 0)")
    p.add_argument("--machine", default=None, help="label in the file names (default: e.g. cpu-2core)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="output folder")
    return p.parse_args(argv)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict[str, Any]:
    info = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def machine_label(info: dict[str, Any]) -> str:
    if "gpu" in info:
        return re.sub(r"[^a-z0-9]+", "-", info["gpu"].lower()).strip("-")
    return f"cpu-{info['cpu_count']}core"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_forward(loaded: Loaded, batches: list[dict[str, torch.Tensor]]) -> float:
    """Seconds for a plain inference forward over ``batches``: the floor the probe is held to."""
    model, device = loaded.model, loaded.device
    model.eval()
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            model(**{k: v.to(device, non_blocking=True) for k, v in b.items() if k != "labels"})
    sync(device)
    return time.perf_counter() - start


def probe_forward(loaded: Loaded, batches: list[dict[str, torch.Tensor]], site: str) -> tuple[float, float]:
    """(the stage's own ``forward_seconds``, wall seconds of the whole ``activation_norms`` call)."""
    sync(loaded.device)
    start = time.perf_counter()
    stat = activation_norms(loaded.model, loaded.arch, iter(batches), site, loaded.device)
    wall = time.perf_counter() - start  # .tolist() inside already synced the device
    assert stat.batches == len(batches)
    return stat.forward_seconds, wall


class _Recorder(_Accumulator):
    """Keeps what the hooks hand to ``add`` so the real reductions can be timed on their own afterwards."""

    def __init__(self, num_layers: int, device: torch.device):
        super().__init__(num_layers, device)
        self.seen: list[tuple[int, torch.Tensor]] = []

    def add(self, index: int, hidden: torch.Tensor) -> None:
        self.seen.append((index, hidden.clone()))


def reduction_seconds(loaded: Loaded, batches: list[dict[str, torch.Tensor]], site: str) -> float:
    """Seconds the hooks' reductions alone take over ``batches``: the probe's intrinsic extra work.

    Timed on short stretches (one batch's reductions at a time), so it is far less exposed to a noisy
    machine than the difference of two multi-second runs. Uses the stage's own accumulator and hooks.
    """
    arch, device, total = loaded.arch, loaded.device, 0.0
    with torch.inference_mode():
        for b in batches:
            b = {k: v.to(device) for k, v in b.items() if k != "labels"}
            recorder = _Recorder(arch.num_layers, device)
            with probe_hooks(loaded.model, arch, site, recorder):
                recorder.set_batch(b["attention_mask"])
                loaded.model(**b)
            acc = _Accumulator(arch.num_layers, device)
            sync(device)
            start = time.perf_counter()
            acc.set_batch(b["attention_mask"])
            for index, hidden in recorder.seen:
                acc.add(index, hidden)
            sync(device)
            total += time.perf_counter() - start
    return total


def summarise(plain: list[float], probe: list[float]) -> dict[str, Any]:
    # within a rep the plain and probe runs are adjacent, so their ratio cancels slow drifts of the machine
    paired = [b / a for a, b in zip(plain, probe)]
    return {
        "plain_median_s": statistics.median(plain),
        "probe_median_s": statistics.median(probe),
        "plain_min_s": min(plain),
        "probe_min_s": min(probe),
        "ratio_of_medians": statistics.median(probe) / statistics.median(plain),
        "ratio_of_mins": min(probe) / min(plain),
        "median_paired_ratio": statistics.median(paired),
    }


def bench_site(
    loaded: Loaded, batches: list[dict[str, torch.Tensor]], site: str, reps: int, isolate_reps: int
) -> dict[str, Any]:
    plain_forward(loaded, batches)  # warm-up: allocator, oneDNN primitives, first hook install
    probe_forward(loaded, batches, site)
    plain, probe, probe_wall = [], [], []

    def run_plain() -> None:
        plain.append(plain_forward(loaded, batches))

    def run_probe() -> None:
        seconds, wall = probe_forward(loaded, batches, site)
        probe.append(seconds)
        probe_wall.append(wall)

    for rep in range(reps):
        # ABBA: even reps plain first, odd reps probe first
        for run in (run_plain, run_probe) if rep % 2 == 0 else (run_probe, run_plain):
            run()
    result = {"site": site, "plain_s": plain, "probe_s": probe, "probe_wall_s": probe_wall}
    result.update(summarise(plain, probe))
    result["wall_ratio_of_medians"] = statistics.median(probe_wall) / result["plain_median_s"]
    result["meets_target"] = result["ratio_of_medians"] <= TARGET
    result["plain_spread"] = max(plain) / min(plain)
    result["noisy"] = result["plain_spread"] > NOISY
    if isolate_reps:
        # min over repetitions: the reductions' cost with the least interference from other processes
        reductions = min(reduction_seconds(loaded, batches, site) for _ in range(isolate_reps))
        result["reductions_s"] = reductions
        result["expected_ratio"] = 1 + reductions / result["plain_min_s"]
    return result


def markdown(doc: dict[str, Any]) -> str:
    m, s = doc["machine"], doc["settings"]
    lines = [
        f"# Probe overhead on {doc['machine_label']}",
        "",
        f"Probe scoring loop vs plain inference forward, same {s['steps']} batches of {s['batch_size']} "
        f"({doc['tokens_per_run']} non-pad tokens, {doc['padded_tokens_per_run']} padded), "
        f"{s['reps']} interleaved (ABBA) reps after a warm-up. Target: ratio of medians <= {TARGET}.",
        "",
        f"- model `{s['model']}`, task `{s['task']}`, seed {s['seed']}, device `{m['device']}`",
        f"- CPU: {m['cpu']}, {m['cpu_count']} logical cores, torch threads {m['torch_threads']}",
        f"- torch {m['torch']}, transformers {m['transformers']}, Python {m['python']}, {m['platform']}",
        f"- date {doc['date']}; command: `{doc['command']}`",
        "",
        "| site | plain median (s) | probe median (s) | ratio of medians | ratio of mins | median paired ratio "
        "| reductions alone (ms) | expected ratio | plain spread | meets target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in doc["results"]:
        reductions = f"{1000 * r['reductions_s']:.1f}" if "reductions_s" in r else "-"
        expected = f"{r['expected_ratio']:.3f}" if "expected_ratio" in r else "-"
        lines.append(
            f"| {r['site']} | {r['plain_median_s']:.3f} | {r['probe_median_s']:.3f} | {r['ratio_of_medians']:.3f} "
            f"| {r['ratio_of_mins']:.3f} | {r['median_paired_ratio']:.3f} | {reductions} | {expected} "
            f"| {r['plain_spread']:.2f}{' (noisy)' if r['noisy'] else ''} | {'yes' if r['meets_target'] else 'no'} |"
        )
    lines += [
        "",
        "probe = `LayerStatistic.forward_seconds` from `activation_norms` (the stage's own timing); paired ratio = "
        "probe / plain within one rep; reductions alone = the hooks' reductions (`_Accumulator.add`) timed on "
        "captured activations, min over runs; expected ratio = 1 + reductions / fastest plain run; plain spread = "
        f"slowest / fastest plain run (above {NOISY}: other processes disturbed the timings, rerun on a quiet "
        "machine or raise --reps). Raw per-rep times are in the JSON file.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    cfg = load_config(
        None,
        [],
        {
            "model.name": args.model,
            "task.name": args.task,
            "probe.steps": args.steps,
            "probe.batch_size": args.batch_size,
            "probe.seed": args.seed,
        },
    )
    spec = task_spec(cfg.task)
    loaded = load_for(cfg, spec.num_labels)
    examples = load_examples(cfg.task, spec, cfg.task.train_split)
    data = encode(loaded.tokenizer, examples, cfg.task.max_length, spec.is_regression)
    p = cfg.probe
    # the very batches the probe stage would see, collated once so collation is not timed
    batches = [collate(data, indices) for indices in probe_batches(data, p.steps, p.batch_size, p.seed)]
    info = machine_info(loaded.device)
    label = args.machine or machine_label(info)
    doc: dict[str, Any] = {
        "benchmark": "probe_overhead",
        "machine_label": label,
        "machine": info,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "settings": {
            "model": cfg.model.name,
            "task": spec.name,
            "steps": p.steps,
            "batch_size": p.batch_size,
            "seed": p.seed,
            "reps": args.reps,
            "isolate_reps": args.isolate_reps,
            "max_length": cfg.task.max_length,
            "order": "warm-up, then ABBA",
        },
        "tokens_per_run": int(sum(b["attention_mask"].sum() for b in batches)),
        "padded_tokens_per_run": int(sum(b["input_ids"].numel() for b in batches)),
        "target_ratio": TARGET,
        "results": [],
    }
    for site in args.sites:
        result = bench_site(loaded, batches, site, args.reps, args.isolate_reps)
        doc["results"].append(result)
        print(
            f"{site:>9}: plain {result['plain_median_s']:.3f}s  probe {result['probe_median_s']:.3f}s  "
            f"ratio(median) {result['ratio_of_medians']:.3f}  ratio(min) {result['ratio_of_mins']:.3f}  "
            f"paired {result['median_paired_ratio']:.3f}"
            + (f"  reductions {1000 * result['reductions_s']:.1f}ms" if "reductions_s" in result else "")
            + ("  [noisy]" if result["noisy"] else ""),
            flush=True,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"probe_overhead_{label}"
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(doc))
    print(f"wrote {stem}.json and {stem}.md")
    return doc


if __name__ == "__main__":
    main()
