"""Runs against a baseline, as the Act-LoRA paper's Tables 2 and 5 define the columns: metric change %,
trainable parameters saved %, device-hours saved %, step-time ratio, latency reduction %, throughput gain %,
peak-memory reduction %. Reads each run's train_summary.json and eval.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import artifacts


def _load(run: Path) -> dict[str, Any]:
    summary = artifacts.read_artifact(run / "train_summary.json", "train_summary")
    evaluation = artifacts.read_artifact(run / "eval.json", "eval")
    split, values = next(iter(evaluation["metrics"].items()))
    metric_name, metric = next(iter(values.items()))
    step = summary["mean_step_ms"]
    unmerged = evaluation["timing"]["unmerged"]
    return {
        "run": str(run),
        "layers": summary["plan"]["layers"],
        "metric_name": f"{split} {metric_name}",
        "metric": metric,
        "trainable_parameters": summary["trainable_parameters"],
        "device_hours": summary["device_hours"],
        "step_ms": step["forward"] + step["backward"] + step["optimizer"],
        "latency_ms": unmerged["latency_ms_mean"],
        "throughput": unmerged["throughput_samples_per_s"],
        "peak_memory_mib": summary["peak_memory_mib"],
    }


def _reduction(base: float | None, value: float | None) -> float | None:
    """100 * (base - value) / base: positive = saved."""
    if base in (None, 0) or value is None:
        return None
    return 100 * (base - value) / base


def compare_runs(runs: list[Path], baseline: Path) -> dict[str, Any]:
    base = _load(baseline)
    rows = []
    for run in [baseline, *runs]:
        r = _load(run)
        gain = _reduction(base["throughput"], r["throughput"])
        rows.append(
            {
                **r,
                "metric_change_pct": -_reduction(base["metric"], r["metric"]) if base["metric"] else None,
                "parameters_saved_pct": _reduction(base["trainable_parameters"], r["trainable_parameters"]),
                "device_hours_saved_pct": _reduction(base["device_hours"], r["device_hours"]),
                "step_time_ratio": r["step_ms"] / base["step_ms"],
                "latency_reduction_pct": _reduction(base["latency_ms"], r["latency_ms"]),
                "throughput_gain_pct": -gain if gain is not None else None,
                "peak_memory_reduction_pct": _reduction(base["peak_memory_mib"], r["peak_memory_mib"]),
            }
        )
    return {"baseline": str(baseline), "rows": rows}


def markdown(report: dict[str, Any]) -> str:
    def fmt(v: float | None, spec: str = ".2f") -> str:
        if v is None:
            return "n/a"
        return format(0.0 if abs(v) < 5e-3 else v, spec)  # no "-0.00" for the baseline itself

    head = (
        "| run | layers | metric | change % | params saved % | device-h saved % | step-time ratio "
        "| latency red. % | throughput gain % | peak-mem red. % |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in report["rows"]:
        lines.append(
            f"| {Path(r['run']).name} | {r['layers']} | {r['metric_name']} {r['metric']:.4f} | {fmt(r['metric_change_pct'])} "
            f"| {fmt(r['parameters_saved_pct'], '.1f')} | {fmt(r['device_hours_saved_pct'], '.1f')} "
            f"| {r['step_time_ratio']:.3f} | {fmt(r['latency_reduction_pct'], '.1f')} "
            f"| {fmt(r['throughput_gain_pct'], '.1f')} | {fmt(r['peak_memory_reduction_pct'], '.1f')} |"
        )
    return "\n".join(lines) + "\n"
