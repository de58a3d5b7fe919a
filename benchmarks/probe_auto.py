"""probe.steps=auto against a fixed S: probe time, the batches used, and whether the plan is the same.

On the offline default (packaged MiniLM on ``movies``, configs/minilm_movies.yaml), for each probe seed:
the probe stage itself (``run_probe``, the model loaded once) with ``probe.steps`` = S (fixed), and with
``probe.steps=auto`` (``probe.max_steps`` = S) for each rank.k of ``--ks`` (auto resolves the plan of one
k; the fixed probe's scores serve every k). A seed's runs are adjacent, their order reversed every other
seed, so a slow spell of a shared machine hits them alike. Probe time is the stage's own ``probe_s`` (the
scoring loop, collation and the stop rule's checks); the rule's checks are also timed alone. Each run's
top-k plan is compared with the plan of a reference probe of ``--ref-steps`` batches (another seed), and
the seeds' plans with each other (pairwise agreement). Writes ``<out>/probe_auto_<machine>.json`` and
``.md``.

    python benchmarks/probe_auto.py                          # S=200, k 3 and 2, seeds 0..4, reference 530
    python benchmarks/probe_auto.py --steps 30 --ref-steps 60          # a busy 2-core machine
    python benchmarks/probe_auto.py --steps 10 --seeds 2 --ref-steps 10 --ks 3 --out /tmp/pa    # smoke run
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import actlora_cli.probe
import actlora_cli.scoring.activation
import actlora_cli.stopping
from actlora_cli.config import load_config
from actlora_cli.data import task_spec
from actlora_cli.distributed import setup
from actlora_cli.modeling import load_for
from actlora_cli.probe import run_probe
from actlora_cli.selection import boundary, select
from actlora_cli.stopping import AutoStop
from actlora_cli.timing import HostLoad

try:  # python -m benchmarks.probe_auto; python benchmarks/probe_auto.py puts benchmarks/ on the path
    from benchmarks import _common as common
except ImportError:
    import _common as common

REFERENCE_SEED = 1000  # the reference probe's batches: a seed none of the compared runs uses


class TimedStop(AutoStop):
    """The stage's stop rule, timing its own checks (put in place of probe.AutoStop for the runs)."""

    seconds = 0.0
    checks = 0

    def __call__(self, means) -> bool:
        start = time.perf_counter()
        try:
            return super().__call__(means)
        finally:
            TimedStop.seconds += time.perf_counter() - start
            TimedStop.checks += 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/minilm_movies.yaml", help="config (default: MiniLM movies)")
    p.add_argument("--ks", type=int, nargs="+", default=[3, 2], help="rank.k values auto resolves (3 2)")
    p.add_argument("--steps", type=int, default=200, help="S of the fixed probe, auto's cap (default 200)")
    p.add_argument("--min-steps", type=int, default=8, help="probe.min_steps of auto (default 8)")
    p.add_argument("--seeds", type=int, default=5, help="probe seeds 0..N-1 (default 5)")
    p.add_argument("--ref-steps", type=int, default=530, help="S of the reference probe (default 530)")
    p.add_argument("--set", action="append", default=[], help="config override key=value")
    p.add_argument("--work", type=Path, default=Path("/tmp/actlora_probe_auto_bench"))
    common.add_output_args(p)
    return p.parse_args(argv)


def probe(base, loaded, work: Path, name: str, **settings) -> dict[str, Any]:
    """The probe stage with ``settings`` (dotted keys) in a fresh scratch folder; its scores.json."""
    folder = work / name
    shutil.rmtree(folder, ignore_errors=True)
    return run_probe(base.with_overrides({**settings, "output_dir": str(folder)}), loaded)


def row(doc: dict[str, Any], k: int, reference: list[int]) -> dict[str, Any]:
    layers = select(doc["scores"], k=k).layers
    out = {
        "seed": doc["seed"],
        "steps_used": doc["steps_used"],
        "stop_reason": doc["stop_reason"],
        "probe_s": doc["timings"]["probe_s"],
        "plan": layers,
        "equals_reference": layers == reference,
    }
    if doc.get("stop_check"):
        check = doc["stop_check"]
        out["boundary"] = {key: check.get(key) for key in ("last_in", "first_out", "gap", "noise")}
    return out


def agreement(plans: list[list[int]]) -> float | None:
    """The share of pairs of seeds whose plans are the same."""
    pairs = list(itertools.combinations(plans, 2))
    return sum(a == b for a, b in pairs) / len(pairs) if pairs else None


def totals(fixed: list[dict[str, Any]], auto: list[dict[str, Any]]) -> dict[str, Any]:
    fixed_s, auto_s = sum(r["probe_s"] for r in fixed), sum(r["probe_s"] for r in auto)
    return {
        "fixed_s": fixed_s,
        "auto_s": auto_s,
        "ratio": auto_s / fixed_s,
        "median_seed_ratio": statistics.median(
            a["probe_s"] / f["probe_s"] for f, a in zip(fixed, auto, strict=True)
        ),
        "fixed_steps": sum(r["steps_used"] for r in fixed),
        "auto_steps": sum(r["steps_used"] for r in auto),
        "auto_median_steps": statistics.median(r["steps_used"] for r in auto),
        "auto_resolved": sum(r["stop_reason"] == "resolved" for r in auto),
        "fixed_equals_reference": sum(r["equals_reference"] for r in fixed),
        "auto_equals_reference": sum(r["equals_reference"] for r in auto),
        "fixed_agreement": agreement([r["plan"] for r in fixed]),
        "auto_agreement": agreement([r["plan"] for r in auto]),
    }


def markdown(doc: dict[str, Any]) -> str:
    s, ref = doc["settings"], doc["reference"]
    lines = common.markdown_header("probe.steps=auto against a fixed S", doc) + [
        (
            f"Model `{s['model']}`, task `{s['task']}`, batch {s['batch_size']}, site {s['site']}: the probe "
            f"stage with probe.steps = {s['steps']} (fixed) and with probe.steps = auto (max_steps "
            f"{s['steps']}, min_steps {s['min_steps']}) for rank.k in {s['ks']}, seeds 0..{s['seeds'] - 1}; "
            "a seed's runs adjacent, their order reversed every other seed."
        ),
        "",
        f"Reference: a probe of {ref['steps']} batches (seed {ref['seed']}, {ref['probe_s']:.1f} s), raw "
        f"A_l {[round(v, 4) for v in ref['raw']]}.",
        "",
    ]
    for k, part in doc["by_k"].items():
        edge, tot = part["reference_boundary"], part["totals"]
        lines += [
            f"## k = {k}",
            "",
            f"Reference plan {part['reference_plan']}: boundary layer {edge['last_in']} in, layer "
            f"{edge['first_out']} out, gap {edge['gap']:.4g} against a standard error of {edge['noise']:.4g} "
            f"for the difference ({edge['gap'] / edge['noise']:.1f} standard errors).",
            "",
            "| seed | fixed S | fixed s | fixed plan | = ref | auto S | auto s | auto plan | = ref | stop "
            "| auto/fixed |",
            "|---:|---:|---:|---|:---:|---:|---:|---|:---:|---|---:|",
        ]
        for f, a in zip(part["fixed"], part["auto"], strict=True):
            cells = [
                f["seed"], f["steps_used"], f"{f['probe_s']:.2f}", f["plan"], _yes(f["equals_reference"]),
                a["steps_used"], f"{a['probe_s']:.2f}", a["plan"], _yes(a["equals_reference"]),
                a["stop_reason"], f"{a['probe_s'] / f['probe_s']:.3f}",
            ]  # fmt: skip
            lines.append("| " + " | ".join(map(str, cells)) + " |")
        lines += [
            "",
            f"- probe seconds over the seeds: fixed {tot['fixed_s']:.1f} s, auto {tot['auto_s']:.1f} s: "
            f"auto / fixed = {tot['ratio']:.3f} (median per seed {tot['median_seed_ratio']:.3f}); batches: "
            f"fixed {tot['fixed_steps']}, auto {tot['auto_steps']} (median {tot['auto_median_steps']}, "
            f"resolved {tot['auto_resolved']}/{s['seeds']}).",
            f"- plan = reference: fixed {tot['fixed_equals_reference']}/{s['seeds']}, auto "
            f"{tot['auto_equals_reference']}/{s['seeds']}; pairwise agreement across seeds: fixed "
            f"{_share(tot['fixed_agreement'])}, auto {_share(tot['auto_agreement'])}.",
            "",
        ]
    rule = doc["stop_rule"]
    lines += [
        f"- the stop rule's checks alone: {rule['checks']} checks, {1000 * rule['seconds']:.1f} ms in all "
        f"({rule['ms_per_check']:.3f} ms each).",
        f"- others' CPU: {_share(doc['others_cpu_share'])} of the machine's CPU time went to other processes "
        "while the runs were timed (from /proc); high values make the seconds (not the batch counts) noisy.",
        "- probe s: the stage's `timings.probe_s` (scoring loop with collation and, for auto, the stop "
        "rule's checks); model loading and tokenisation are not in it.",
        f"- wall time of the benchmark: {doc['wall_s']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    base = load_config(args.config, args.set, {"output_dir": str(args.work / "base")})
    spec = task_spec(base.task)
    loaded = load_for(base.model, spec.num_labels, setup().device)
    code = (actlora_cli.probe, actlora_cli.stopping, actlora_cli.scoring.activation)
    doc: dict[str, Any] = common.header("probe_auto", loaded.device, args.machine, code=code)
    doc["settings"] = {
        "config": args.config,
        "set": args.set,
        "model": base.model.name,
        "task": spec.name,
        "batch_size": base.probe.batch_size,
        "site": base.probe.site,
        "ks": args.ks,
        "steps": args.steps,
        "min_steps": args.min_steps,
        "seeds": args.seeds,
        "ref_steps": args.ref_steps,
    }
    ref_doc = probe(
        base, loaded, args.work, "reference", **{"probe.steps": args.ref_steps, "probe.seed": REFERENCE_SEED}
    )
    doc["reference"] = {
        "seed": REFERENCE_SEED,
        "steps": args.ref_steps,
        "probe_s": ref_doc["timings"]["probe_s"],
        "raw": ref_doc["raw"],
        "raw_stderr": ref_doc["raw_stderr"],
    }
    references = {k: select(ref_doc["scores"], k=k) for k in args.ks}
    print(f"reference ({args.ref_steps} batches): {[round(v, 4) for v in ref_doc['raw']]}", flush=True)
    actlora_cli.probe.AutoStop = TimedStop  # the stage's rule, its checks timed
    load = HostLoad()
    fixed: list[dict[str, Any]] = []  # one probe per seed: its scores give every k's plan
    auto: dict[int, list[dict[str, Any]]] = {k: [] for k in args.ks}
    for seed in range(args.seeds):
        variants = ["fixed", *args.ks]
        for variant in common.interleaved(variants, seed):
            settings = {"probe.seed": seed, "probe.steps": args.steps}
            if variant == "fixed":
                fixed.append(probe(base, loaded, args.work, f"fixed{seed}", **settings))
                print(f"seed {seed}: fixed {fixed[-1]['timings']['probe_s']:.2f}s", flush=True)
                continue
            settings |= {
                "probe.steps": "auto",
                "probe.max_steps": args.steps,
                "probe.min_steps": args.min_steps,
            }
            settings |= {"rank.k": variant, "rank.tau": None}
            r = row(
                probe(base, loaded, args.work, f"auto{seed}_k{variant}", **settings),
                variant,
                references[variant].layers,
            )
            auto[variant].append(r)
            print(
                f"seed {seed}: auto k={variant} {r['steps_used']} batches {r['probe_s']:.2f}s {r['plan']} "
                f"({r['stop_reason']})",
                flush=True,
            )
    actlora_cli.probe.AutoStop = AutoStop
    doc["others_cpu_share"] = load.others_share()
    doc["stop_rule"] = {
        "checks": TimedStop.checks,
        "seconds": TimedStop.seconds,
        "ms_per_check": 1000 * TimedStop.seconds / max(TimedStop.checks, 1),
    }
    doc["by_k"] = {}
    for k in args.ks:
        plan = references[k]
        fixed_rows = [row(d, k, plan.layers) for d in fixed]
        doc["by_k"][k] = {
            "reference_plan": plan.layers,
            "reference_boundary": boundary(k, ref_doc["raw"], ref_doc["raw_stderr"], plan.ranking or []),
            "fixed": fixed_rows,
            "auto": auto[k],
            "totals": totals(fixed_rows, auto[k]),
        }
    doc["wall_s"] = round(time.perf_counter() - started, 1)
    common.write_result(args.out, doc, markdown(doc))
    return doc


if __name__ == "__main__":
    main()
