"""Runs against a baseline, with the columns of the Act-LoRA paper's Table 5: metric change %, trainable
parameters saved %, device-hours saved %, step-time ratio, latency reduction %, throughput gain %, peak-memory
reduction %.

Runs whose ``config.resolved.yaml`` are equal except for ``train.seed`` (and ``output_dir``), and that trained
the same method on the same layers, form a group; every column is reported as mean ± population std (ddof=0)
over the group's seeds. The baseline folder's group is the baseline: each run's change is taken against the
baseline group's mean, so a group's mean change is the change of its mean (every change is linear in the
run's value). Reads each run's train_summary.json, eval.json and config.resolved.yaml."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from . import artifacts
from .analysis.report import markdown_table
from .errors import ActloraError, ArtifactError, Problem

IGNORED_KEYS = ("train.seed", "output_dir")  # runs differing only here are seeds of one group
LABEL_KEYS = ("lora.method", "rank.k", "rank.tau")  # the label shows their effect as method and layers
PHASES = ("forward", "backward", "optimizer")
STD = "population std (ddof=0) over the group's seeds"
# a run's numbers, each reported as mean ± std per group; peak memory is None on CPU
VALUES = (
    "metric",
    "trainable_parameters",
    "device_hours",
    "step_ms",
    *(f"{p}_ms" for p in PHASES),
    "latency_ms",
    "throughput",
    "peak_memory_mib",
)


class Change(NamedTuple):
    key: str
    source: str  # the run value it is computed from
    kind: str  # gain: 100 (v - b) / |b|; saved: the negative of gain; ratio: v / b
    header: str
    spec: str  # Markdown number format


CHANGES = (
    Change("metric_change_pct", "metric", "gain", "change %", ".2f"),
    Change("parameters_saved_pct", "trainable_parameters", "saved", "params saved %", ".1f"),
    Change("device_hours_saved_pct", "device_hours", "saved", "device-h saved %", ".1f"),
    Change("step_time_ratio", "step_ms", "ratio", "step-time ratio", ".3f"),
    Change("latency_reduction_pct", "latency_ms", "saved", "latency red. %", ".1f"),
    Change("throughput_gain_pct", "throughput", "gain", "throughput gain %", ".1f"),
    Change("peak_memory_reduction_pct", "peak_memory_mib", "saved", "peak-mem red. %", ".1f"),
)


def _reader(doc: dict[str, Any], path: Path) -> Callable[[str], Any]:
    """``get('a.b')`` -> ``doc['a']['b']``, or an error naming the file and the missing key."""
    maker = artifacts.KINDS[doc["kind"]][1]

    def get(dotted: str) -> Any:
        value: Any = doc
        for key in dotted.split("."):
            if not isinstance(value, dict) or key not in value:
                problem = Problem(str(path), f"has no '{dotted}'", f"re-run `{maker}` for this run")
                raise ArtifactError(problem)
            value = value[key]
        return value

    return get


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections -> {'train.seed': 0, ...}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _read_config(path: Path) -> dict[str, Any]:
    fix = "re-run `actlora eval` with this run's config: every stage writes it, and compare groups runs by it"
    if not path.is_file():
        raise ArtifactError(Problem(str(path), "no resolved config", fix))
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = getattr(exc, "problem", None) or getattr(exc, "strerror", None) or type(exc).__name__
        raise ArtifactError(Problem(str(path), f"cannot be read as YAML ({reason})", fix)) from None
    if not isinstance(config, dict):
        what = f"is a {type(config).__name__}, not a mapping of config sections"
        raise ArtifactError(Problem(str(path), what, fix))
    return _flatten(config)


def _check_same_weights(summary: dict[str, Any], evaluation: dict[str, Any], eval_path: Path) -> None:
    """eval.json must have measured the weights train_summary.json describes: a run trained again keeps no
    stale eval (train sets the old one aside), but an eval.json copied in or made before this check is caught
    here. Runs from before weights were hashed (neither file has a hash) are compared as they are."""
    trained, measured = summary.get("weights_hash"), evaluation.get("weights_hash")
    if trained is None or trained == measured:
        return
    what = (
        f"measured weights {measured}, but the run's trained weights are {trained} (it was trained again)"
        if measured
        else "does not say which weights it measured, and the run was trained after it"
    )
    raise ArtifactError(Problem(str(eval_path), what, "re-run `actlora eval` for this run"))


def _load(run: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """One run's values (its row of the report) and its flattened resolved config."""
    summary_path, eval_path = run / "train_summary.json", run / "eval.json"
    summary_doc = artifacts.read_artifact(summary_path, "train_summary")
    eval_doc = artifacts.read_artifact(eval_path, "eval")
    _check_same_weights(summary_doc, eval_doc, eval_path)
    summary, evaluation = _reader(summary_doc, summary_path), _reader(eval_doc, eval_path)
    config = _read_config(run / "config.resolved.yaml")
    split, values = next(iter(evaluation("metrics").items()), (None, None))
    if not values or not isinstance(values, dict):
        raise ArtifactError(Problem(str(eval_path), "has no metric values", "re-run `actlora eval`"))
    metric_name, metric = next(iter(values.items()))
    step = {f"{phase}_ms": summary(f"mean_step_ms.{phase}") for phase in PHASES}
    row = {
        "run": str(run),
        "seed": config.get("train.seed"),
        "method": summary("lora").get("method", "lora"),  # summaries from before lora.method are plain LoRA
        "layers": summary("plan.layers"),
        "num_layers": summary("model").get("num_layers"),
        "metric_name": f"{split} {metric_name}",
        "metric": metric,
        "trainable_parameters": summary("trainable_parameters"),
        "device_hours": summary("device_hours"),
        **step,
        "latency_ms": evaluation("timing.unmerged.latency_ms_mean"),
        "throughput": evaluation("timing.unmerged.throughput_samples_per_s"),
        "peak_memory_mib": summary("peak_memory_mib"),  # None on CPU
    }
    may_be_none = {"peak_memory_mib"} if row["peak_memory_mib"] is None else set()
    bad = [k for k in VALUES if k in row and k not in may_be_none and not _is_number(row[k])]
    if bad:
        fix = "re-run `actlora train` and `actlora eval`"
        raise ArtifactError(Problem(str(run), f"{', '.join(bad)}: not a number", fix))
    row["step_ms"] = sum(step.values())
    return row, config


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _change(kind: str, base: float | None, value: float | None) -> float | None:
    if base in (None, 0) or value is None:
        return None
    if kind == "ratio":
        return value / base
    gain = 100 * (value - base) / abs(base)  # |b|: a negative baseline (e.g. a correlation) keeps the sign
    return gain if kind == "gain" else -gain


def _mean_std(values: list[float | None]) -> dict[str, float | None]:
    """Mean and population std (ddof=0: the seeds run are all that is reported on); None if any is None."""
    if not values or any(v is None for v in values):
        return {"mean": None, "std": None}
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values)}


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(map(str, value)) + "]"
    return "null" if value is None else str(value)


def _labels(groups: list[dict[str, Any]], configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Method and layers, plus ``key=value`` for each config key that varies between the groups (other than
    those method and layers already show). Labels are unique: should two still collide, every varying key is
    shown, and two groups with equal configs differ in method or layers."""
    missing = object()
    keys = dict.fromkeys(k for config in configs for k in config)
    varying = [k for k in keys if len({json.dumps(c.get(k, missing), default=repr) for c in configs}) > 1]
    shown = [k for k in varying if k not in LABEL_KEYS]

    def label(group: dict[str, Any], config: dict[str, Any], keys: list[str]) -> str:
        layers = group["layers"]
        everything = group["num_layers"] is not None and layers == list(range(group["num_layers"]))
        parts = [group["method"], "[all]" if everything else _text(layers)]
        parts += [f"{k}={_text(config.get(k, '<unset>'))}" for k in keys]
        return " ".join(parts)

    labels = [label(g, c, shown) for g, c in zip(groups, configs, strict=True)]
    if len(set(labels)) < len(labels):
        shown = varying
        labels = [label(g, c, shown) for g, c in zip(groups, configs, strict=True)]
    return [
        {"label": text, "differs": {k: c.get(k) for k in shown}}
        for text, c in zip(labels, configs, strict=True)
    ]


def compare_runs(runs: list[Path], baseline: Path) -> dict[str, Any]:
    """Group ``runs`` and ``baseline`` by config (seed aside); every Table 5 column as mean ± std per group,
    the changes against the baseline group's mean. Every unreadable folder is reported in one error."""
    folders = list({Path(r).resolve(): Path(r) for r in [baseline, *runs]}.values())  # baseline first, once
    loaded, problems = [], []
    for folder in folders:
        try:
            loaded.append(_load(folder))
        except ActloraError as exc:
            problems += exc.problems
    if problems:
        raise ArtifactError(problems, source="compare")

    members: dict[tuple, list[int]] = {}
    for i, (row, config) in enumerate(loaded):
        same = {k: v for k, v in config.items() if k not in IGNORED_KEYS}
        key = (json.dumps(same, sort_keys=True, default=repr), row["method"], json.dumps(row["layers"]))
        members.setdefault(key, []).append(i)
    indices = list(members.values())  # the baseline's group first: the baseline was loaded first
    rows = [row for row, _ in loaded]

    groups = []
    for n, group in enumerate(indices):
        first = rows[group[0]]
        groups.append(
            {
                "method": first["method"],
                "layers": first["layers"],
                "num_layers": first["num_layers"],
                "metric_name": first["metric_name"],
                "n": len(group),
                "seeds": [rows[i]["seed"] for i in group],
                "runs": [rows[i]["run"] for i in group],
                "is_baseline": n == 0,
                "values": {name: _mean_std([rows[i][name] for i in group]) for name in VALUES},
            }
        )
    configs = [{k: v for k, v in loaded[g[0]][1].items() if k not in IGNORED_KEYS} for g in indices]
    for group, names in zip(groups, _labels(groups, configs), strict=True):
        group.update(names)

    base = groups[0]
    for group, index in zip(groups, indices, strict=True):
        for i in index:
            rows[i]["group"] = group["label"]
            for change in CHANGES:
                comparable = change.source != "metric" or rows[i]["metric_name"] == base["metric_name"]
                base_mean = base["values"][change.source]["mean"] if comparable else None
                rows[i][change.key] = _change(change.kind, base_mean, rows[i][change.source])
        group["changes"] = {c.key: _mean_std([rows[i][c.key] for i in index]) for c in CHANGES}
    return {
        "baseline": str(baseline),
        "baseline_group": base["label"],
        "grouping": "runs whose config.resolved.yaml differ only in "
        + " and ".join(IGNORED_KEYS)
        + " (same method and layers) are seeds of one group",
        "std": STD,
        "groups": groups,
        "rows": [rows[i] for index in indices for i in index],  # group by group, the baseline's first
    }


def _number(value: float, spec: str) -> str:
    text = format(value, spec)
    return format(0.0, spec) if float(text) == 0 else text  # no "-0.00"


def _mean_pm_std(stat: dict[str, float | None], spec: str, n: int) -> str:
    if stat["mean"] is None:
        return "n/a"
    if n == 1:  # one seed: no spread was measured, so none is shown
        return _number(stat["mean"], spec)
    return f"{_number(stat['mean'], spec)} ± {_number(stat['std'], spec)}"


def markdown(report: dict[str, Any]) -> str:
    """The groups as a Table 5 style table (mean ± std, n seeds), then which run is in which group."""
    groups = report["groups"]
    headers = ["group", "n", "metric", "value", *(c.header for c in CHANGES)]
    table = [
        [
            g["label"],
            g["n"],
            g["metric_name"],
            _mean_pm_std(g["values"]["metric"], ".4f", g["n"]),
            *(_mean_pm_std(g["changes"][c.key], c.spec, g["n"]) for c in CHANGES),
        ]
        for g in groups
    ]
    runs = [[r["run"], r["group"], _text(r["seed"]), _number(r["metric"], ".4f")] for r in report["rows"]]
    intro = (
        f"Baseline: {report['baseline_group']} (n={groups[0]['n']}). Cells are mean ± std, {report['std']} "
        "(a group of one seed shows its value alone); "
        "changes compare each run with the baseline group's mean.\n"
    )
    runs_table = markdown_table(["run", "group", "seed", "value"], runs)
    return "\n".join([intro, markdown_table(headers, table), runs_table])


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    """``out`` (a 'comparison' JSON artefact), its Markdown beside it, and two charts: metric against
    trainable parameters, and step time by phase. Each file is written atomically, the JSON last: when it is
    there, so is the rest."""
    from .analysis import plots

    out = Path(out)
    if out.suffix != ".json":
        what = "must end in .json (its .md and charts go beside it)"
        raise ActloraError(Problem(f"--out {out}", what, f"e.g. --out {out.with_suffix('.json')}"))
    groups = report["groups"]
    labels = [g["label"] for g in groups]
    names = {g["metric_name"] for g in groups}
    metric = [g["values"]["metric"] for g in groups]
    step = [g["values"]["step_ms"] for g in groups]
    written = [
        plots.plot_metric_vs_parameters(
            labels,
            [g["values"]["trainable_parameters"]["mean"] for g in groups],
            [m["mean"] for m in metric],
            [m["std"] for m in metric],
            out.with_name(f"{out.stem}_metric_vs_params.png"),
            ylabel=names.pop() if len(names) == 1 else "metric (first of each run's eval)",
        ),
        plots.plot_step_phases(
            labels,
            {p: [g["values"][f"{p}_ms"]["mean"] for g in groups] for p in PHASES},
            [s["std"] for s in step],
            out.with_name(f"{out.stem}_step_time.png"),
        ),
    ]
    md = out.with_suffix(".md")
    artifacts.atomic_write_text(md, markdown(report))
    artifacts.write_artifact(out, "comparison", report)
    return [out, md, *written]
