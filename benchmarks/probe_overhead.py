"""Probe overhead: the probe stage's scoring loop against a plain inference forward over the same batches.

DESIGN.md section 5: "Hooks add reductions only: the probe's throughput should be that of a plain inference
forward." This measures that claim on the offline default (packaged MiniLM, task ``movies``) for every probe
site, and writes ``<out>/probe_overhead_<machine>.json`` and ``.md``. Target: probe / plain <= 1.05.

The S batches are collated once, so both variants see identical tensors and collation is not timed. The
probe variant is the stage's own ``activation_norms`` over those batches. The variants are interleaved ABBA
(plain, probe, probe, plain, ...) after a warm-up, so a slow spell of a shared machine hits both.

Besides whole-loop medians and minima, every batch is timed inside each run (for the probe, by stamping the
moment ``activation_norms`` asks for the next batch), and the hooks' reductions are timed alone on captured
activations. Both are far less exposed to other processes than the difference of two multi-second runs.

    python benchmarks/probe_overhead.py                       # S=20, batch 32, 7 reps, all sites
    python benchmarks/probe_overhead.py --steps 10 --reps 3 --sites post_attn
    python benchmarks/probe_overhead.py --steps 5 --reps 2 --out /tmp/po     # smoke run
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Iterator
from typing import Any

import torch

import actlora_cli.probe
import actlora_cli.scoring.activation
from actlora_cli.config import load_config
from actlora_cli.data import collate, encode, load_examples, task_spec
from actlora_cli.distributed import setup
from actlora_cli.modeling import Loaded, load_for
from actlora_cli.probe import probe_batches
from actlora_cli.scoring.activation import _Accumulator, activation_norms, probe_hooks
from actlora_cli.timing import HostLoad

try:  # python -m benchmarks.probe_overhead; python benchmarks/probe_overhead.py puts benchmarks/ on the path
    from benchmarks import _common as common
except ImportError:
    import _common as common

SITES = ("post_attn", "pre_attn", "block_out")
TARGET = 1.05
NOISY_SPREAD = 1.20  # slowest / fastest plain run above this: the site's timings were disturbed
NOISY_OTHERS = 0.10  # share of the machine's CPU time used by other processes (and the hypervisor) above this

Batches = list[dict[str, torch.Tensor]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20, help="S: probe batches per timed run (default 20)")
    p.add_argument("--batch-size", type=int, default=32, help="examples per batch (default 32)")
    p.add_argument("--reps", type=int, default=7, help="timed runs of each variant per site (default 7)")
    p.add_argument("--sites", nargs="+", choices=SITES, default=list(SITES), help="probe sites (default all)")
    p.add_argument("--isolate-reps", type=int, default=3, help="runs timing the reductions alone (0: skip)")
    p.add_argument("--model", default="packaged:all-MiniLM-L6-v2", help="model.name")
    p.add_argument("--task", default="movies", help="task.name (default: movies)")
    p.add_argument("--seed", type=int, default=0, help="probe.seed, which picks the batches (default 0)")
    common.add_output_args(p)
    return p.parse_args(argv)


def stamped(batches: Batches, device: torch.device, stamps: list[float]) -> Iterator[dict[str, torch.Tensor]]:
    """Yields ``batches``, noting the time each one is asked for: consecutive stamps bracket one batch."""
    for b in batches:
        common.sync(device)
        stamps.append(time.perf_counter())
        yield b


def per_batch(stamps: list[float], end: float) -> list[float]:
    edges = [*stamps, end]
    return [b - a for a, b in itertools.pairwise(edges)]


def plain_forward(loaded: Loaded, batches: Batches) -> tuple[float, list[float]]:
    """(seconds, per-batch seconds) of a plain inference forward over ``batches``: the floor for the probe."""
    model, device, stamps = loaded.model, loaded.device, []
    model.eval()
    common.sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for b in stamped(batches, device, stamps):
            model(**{k: v.to(device, non_blocking=True) for k, v in b.items() if k != "labels"})
    common.sync(device)
    end = time.perf_counter()
    return end - start, per_batch(stamps, end)


def probe_forward(loaded: Loaded, batches: Batches, site: str) -> tuple[float, list[float]]:
    """(the stage's own ``forward_seconds``, per-batch seconds) of ``activation_norms`` over ``batches``."""
    stamps: list[float] = []
    timed = stamped(batches, loaded.device, stamps)
    stat = activation_norms(loaded.model, loaded.arch, timed, site, loaded.device)
    end = time.perf_counter()  # .tolist() at its end already synced the device
    assert stat.batches == len(batches)
    return stat.forward_seconds, per_batch(stamps, end)


class _Recorder(_Accumulator):
    """Keeps what the hooks hand to ``add``, so the stage's reductions can be timed alone afterwards."""

    def __init__(self, num_layers: int, device: torch.device):
        super().__init__(num_layers, device)
        self.seen: list[tuple[int, torch.Tensor]] = []

    def add(self, index: int, hidden: torch.Tensor) -> None:
        self.seen.append((index, hidden.clone()))


def reduction_seconds(loaded: Loaded, batches: Batches, site: str) -> float:
    """Seconds the hooks' reductions alone take over ``batches``: the probe's intrinsic extra work.

    One batch's activations are captured through the stage's hooks, then its real accumulator is timed on
    them; short stretches, so little exposed to other processes.
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
            common.sync(device)
            start = time.perf_counter()
            acc.set_batch(b["attention_mask"])
            for index, hidden in recorder.seen:
                acc.add(index, hidden)
            common.sync(device)
            total += time.perf_counter() - start
    return total


def bench_site(loaded: Loaded, batches: Batches, site: str, reps: int, isolate_reps: int) -> dict[str, Any]:
    plain_forward(loaded, batches)  # warm-up: allocator, oneDNN primitives, first hook install
    probe_forward(loaded, batches, site)
    load = HostLoad()
    plain: list[float] = []
    probe: list[float] = []
    plain_each: list[list[float]] = []
    probe_each: list[list[float]] = []

    def run_plain() -> None:
        seconds, each = plain_forward(loaded, batches)
        plain.append(seconds)
        plain_each.append(each)

    def run_probe() -> None:
        seconds, each = probe_forward(loaded, batches, site)
        probe.append(seconds)
        probe_each.append(each)

    for rep in range(reps):
        for run in (run_plain, run_probe) if rep % 2 == 0 else (run_probe, run_plain):  # ABBA
            run()
    # noise only ever adds time: the fastest sample of each batch over the reps is its least disturbed cost
    plain_floor = sum(map(min, zip(*plain_each, strict=True)))
    probe_floor = sum(map(min, zip(*probe_each, strict=True)))
    # within a rep the two runs are adjacent, so their ratio cancels slow drifts of the machine
    paired = [b / a for a, b in zip(plain, probe, strict=True)]
    result: dict[str, Any] = {
        "site": site,
        "plain_median_s": statistics.median(plain),
        "probe_median_s": statistics.median(probe),
        "ratio_of_medians": statistics.median(probe) / statistics.median(plain),
        "ratio_of_mins": min(probe) / min(plain),
        "median_paired_ratio": statistics.median(paired),
        "plain_batch_floor_s": plain_floor,
        "probe_batch_floor_s": probe_floor,
        "ratio_of_batch_floors": probe_floor / plain_floor,
        "plain_spread": max(plain) / min(plain),
    }
    result["others_cpu_share"] = load.others_share()
    others = result["others_cpu_share"] or 0.0
    result["noisy"] = result["plain_spread"] > NOISY_SPREAD or others > NOISY_OTHERS
    if isolate_reps:
        reductions = min(reduction_seconds(loaded, batches, site) for _ in range(isolate_reps))
        result["reductions_s"] = reductions
        result["expected_ratio"] = 1 + reductions / plain_floor
    result["meets_target"] = result["ratio_of_medians"] <= TARGET
    result["plain_s"], result["probe_s"] = plain, probe
    result["plain_batch_s"] = [[round(t, 5) for t in run] for run in plain_each]
    result["probe_batch_s"] = [[round(t, 5) for t in run] for run in probe_each]
    return result


def markdown(doc: dict[str, Any]) -> str:
    s = doc["settings"]
    lines = common.markdown_header("Probe overhead", doc) + [
        (
            f"Probe scoring loop vs plain inference forward, same {s['steps']} batches of {s['batch_size']} "
            f"({doc['tokens_per_run']} non-pad tokens, {doc['padded_tokens_per_run']} padded), "
            f"{s['reps']} interleaved (ABBA) reps after a warm-up. Target: probe / plain <= {TARGET}."
        ),
        "",
        f"Model `{s['model']}`, task `{s['task']}`, seed {s['seed']}.",
        "",
    ]
    columns = {
        "site": lambda r: r["site"],
        "plain median (s)": lambda r: f"{r['plain_median_s']:.3f}",
        "probe median (s)": lambda r: f"{r['probe_median_s']:.3f}",
        "ratio of medians": lambda r: f"{r['ratio_of_medians']:.3f}",
        "ratio of mins": lambda r: f"{r['ratio_of_mins']:.3f}",
        "median paired ratio": lambda r: f"{r['median_paired_ratio']:.3f}",
        "ratio of batch floors": lambda r: f"{r['ratio_of_batch_floors']:.3f}",
        "reductions alone (ms)": lambda r: f"{1000 * r['reductions_s']:.1f}" if "reductions_s" in r else "-",
        "expected ratio": lambda r: f"{r['expected_ratio']:.3f}" if "expected_ratio" in r else "-",
        "plain spread": lambda r: f"{r['plain_spread']:.2f}",
        "others' CPU": lambda r: "-" if r["others_cpu_share"] is None else f"{r['others_cpu_share']:.0%}",
        "meets target": lambda r: ("yes" if r["meets_target"] else "no") + (" (noisy)" if r["noisy"] else ""),
    }
    lines += ["| " + " | ".join(columns) + " |", "|---|" + "---:|" * (len(columns) - 2) + ":---:|"]
    lines += ["| " + " | ".join(cell(r) for cell in columns.values()) + " |" for r in doc["results"]]
    lines += [
        "",
        "- meets target: ratio of medians <= the target; noisy: see plain spread and others' CPU.",
        "- probe: `LayerStatistic.forward_seconds` of `activation_norms`, the stage's own timing.",
        "- paired ratio: probe / plain within one rep (the two runs are adjacent).",
        (
            "- batch floors: per batch, the fastest of the reps, summed over the batches; noise only adds "
            "time, so this is the least disturbed estimate of each loop."
        ),
        (
            "- reductions alone: the hooks' reductions (`_Accumulator.add`) timed on captured activations, "
            "fastest of the isolation runs; expected ratio = 1 + reductions / plain batch floor."
        ),
        (
            "- plain spread: slowest / fastest plain run; others' CPU: share of the machine's CPU time that "
            "other processes (or the hypervisor's steal) took while the site was timed, from /proc. Above "
            f"{NOISY_SPREAD} or {NOISY_OTHERS:.0%} (marked noisy) the whole-run ratios are unreliable: "
            "rerun on a quiet machine or raise --reps."
        ),
        "- per-run and per-batch times are in the JSON file.",
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
    loaded = load_for(cfg.model, spec.num_labels, setup().device)
    examples = load_examples(cfg.task, spec, cfg.task.train_split)
    data = encode(loaded.tokenizer, examples, cfg.task.max_length, spec.is_regression)
    p = cfg.probe
    # the very batches the probe stage would see, collated once so collation is not timed
    batches = [collate(data, indices) for indices in probe_batches(data, p.steps, p.batch_size, p.seed)]
    code = (actlora_cli.scoring.activation, actlora_cli.probe)
    doc: dict[str, Any] = common.header("probe_overhead", loaded.device, args.machine, code=code)
    doc |= {
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
        r = bench_site(loaded, batches, site, args.reps, args.isolate_reps)
        doc["results"].append(r)
        print(
            f"{site:>9}: plain {r['plain_median_s']:.3f}s  probe {r['probe_median_s']:.3f}s  "
            f"ratio: medians {r['ratio_of_medians']:.3f}  mins {r['ratio_of_mins']:.3f}  "
            f"paired {r['median_paired_ratio']:.3f}  batch floors {r['ratio_of_batch_floors']:.3f}"
            + (f"  expected {r['expected_ratio']:.3f}" if "expected_ratio" in r else "")
            + ("  [noisy]" if r["noisy"] else ""),
            flush=True,
        )
    common.write_result(args.out, doc, markdown(doc))
    return doc


if __name__ == "__main__":
    main()
