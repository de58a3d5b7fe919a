"""Runs against a baseline, with the columns of the Act-LoRA paper's Table 5: metric change %, trainable
parameters saved %, device-hours saved %, step-time ratio, latency reduction %, throughput gain %, peak-memory
reduction %.

Runs whose ``config.resolved.yaml`` are equal except for ``train.seed`` (and ``output_dir``), and that trained
the same method on the same layers, form a group; every column is reported as mean ± population std (ddof=0)
over the group's seeds. The baseline folder's group is the baseline: each run's change is taken against the
baseline group's mean, so a group's mean change is the change of its mean (every change is linear in the
run's value). Reads each run's train_summary.json, eval.json and config.resolved.yaml.

The cost account (see DEFINITIONS): device-hours are the timed forward, backward and optimizer phases x ranks;
the probe a plan was ranked from (the run's scores.json) is charged to it in full and, amortised, shared among
the compared runs made from the same probe; evaluation, checkpoints, loading and data preparation are columns
of their own. The report warns when runs were timed under different load from other work on the host, and
when summaries of the older definition (device-hours as the loop's wall time) are among them."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from . import artifacts
from .analysis.report import image, markdown_table
from .errors import ActloraError, ArtifactError, Problem
from .metrics import task_score

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
    "probe_seconds",
    "device_hours_with_probe",
    "device_hours_amortised",
    *(f"{part}_seconds" for part in ("eval", "checkpoint", "load", "data")),
    "others_cpu_share",
)
# values that may be None: peak memory on CPU; the probe when a scores plan's scores.json is gone; the cost
# parts and the host's load in summaries from before they were recorded
OPTIONAL = frozenset(VALUES[VALUES.index("peak_memory_mib") :])
# the parts of a run's cost that device-hours leave out (train_summary.json's cost), as Markdown names them
OTHER_COSTS = {"eval": "eval", "checkpoint": "ckpt", "load": "load", "data": "data"}
# plans ranked from a probe's scores; a plan by position (last, first, uniform, random), rank.layers or k=all
# needed none and is charged none
PROBED_STRATEGIES, PROBED_RULES = ("scores", "inverse"), ("top_k", "tau")
LOAD_GAP, LOAD_BUSY = 0.15, 0.25  # others' CPU share: a gap between two runs, or one run's, worth a warning
DEFINITIONS = {
    "device_hours": "the timed forward, backward and optimizer phases of every step x ranks / 3600 "
    "(train_summary.json device_hours); summaries without 'cost' (the older definition) measured the "
    "training loop's wall time instead",
    "probe_seconds": "the probe's scoring pass (scores.json timings.probe_s) x its world size, charged to "
    "a run whose plan was ranked from it (strategy scores or inverse, rule top_k or tau); k=all and plans "
    "by position or by rank.layers are charged 0. The probe's model load (timings.load_s x world size) is "
    "reported apart, as probe_load_seconds, as a training run's load is",
    "device_hours_with_probe": "device-hours + probe seconds / 3600: each run charged the whole probe",
    "device_hours_amortised": "device-hours + probe seconds / 3600 / the number of compared runs made "
    "from the same probe (the same scores.json content hash)",
    "saved_pct": "100 (baseline group's mean - run) / baseline group's mean, of the same quantity",
    "other_seconds": "evaluation, checkpointing, model loading and data preparation (train_summary.json "
    "cost): not in device-hours",
    "others_cpu_share": f"share of the machine's CPU that other processes took while the run trained; a "
    f"gap over {LOAD_GAP} between two runs, or a share over {LOAD_BUSY}, is warned on",
}


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
    Change(
        "device_hours_saved_with_probe_pct", "device_hours_with_probe", "saved", "saved incl. probe %", ".1f"
    ),
    Change(
        "device_hours_saved_amortised_pct",
        "device_hours_amortised",
        "saved",
        "saved incl. probe (amortised) %",
        ".1f",
    ),
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


def _is_probed(plan: dict[str, Any], num_layers: int | None) -> bool:
    """Whether the plan was ranked from a probe's scores. Plans written before strategy existed were all
    ranked from scores; before rule existed, a plan of every layer was k=all."""
    rule = plan.get("rule")
    if rule is None:
        rule = "all" if num_layers is not None and plan["layers"] == list(range(num_layers)) else "top_k"
    return plan.get("strategy", "scores") in PROBED_STRATEGIES and rule in PROBED_RULES


def _probe(run: Path) -> dict[str, Any]:
    """The probe behind a run's plan, from the run's scores.json: its scoring seconds and model load x its
    world size, and its content hash (runs with equal hashes were made from one probe). ``seconds`` is None,
    with the reason in ``problem``, when it cannot be told."""
    path = run / "scores.json"
    probe: dict[str, Any] = {"scores": str(path), "hash": None, "seconds": None, "load_seconds": None}
    if not path.is_file():
        return {**probe, "problem": "its plan was ranked from scores but the folder has no scores.json"}
    try:
        doc = artifacts.read_artifact(path, "scores")
    except ActloraError as exc:
        return {**probe, "problem": "; ".join(f"{p.where}: {p.what}" for p in exc.problems)}
    probe["hash"] = artifacts.file_hash(path)
    timings, world = doc.get("timings"), doc.get("world_size", 1)
    scoring = timings.get("probe_s") if isinstance(timings, dict) else None
    if not _is_number(scoring) or not _is_number(world):
        return {**probe, "problem": f"{path} has no timings.probe_s (re-run `actlora probe` to time it)"}
    load = timings.get("load_s")
    probe.update(
        world_size=world,
        seconds=scoring * world,
        load_seconds=load * world if _is_number(load) else None,
        problem=None,
    )
    selection = run / "selection.json"
    made_from = _json_or_none(selection).get("scores_hash")
    if made_from is not None and made_from != probe["hash"]:
        probe["problem"] = (
            f"{selection} was made from other scores than {path} (probed again since): the newer probe is "
            "charged"
        )
    return probe


def _json_or_none(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


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
    cost, host = summary_doc.get("cost"), summary_doc.get("host")
    cost, host = (cost if isinstance(cost, dict) else {}), (host if isinstance(host, dict) else {})
    num_layers = summary("model").get("num_layers")
    probe = _probe(run) if _is_probed(summary("plan"), num_layers) else None
    row = {
        "run": str(run),
        "seed": config.get("train.seed"),
        "task": config.get("task.name"),
        "task_score": task_score(evaluation("metrics")),
        "method": summary("lora").get("method", "lora"),  # summaries from before lora.method are plain LoRA
        "layers": summary("plan.layers"),
        "num_layers": num_layers,
        "metric_name": f"{split} {metric_name}",
        "metric": metric,
        "trainable_parameters": summary("trainable_parameters"),
        "device_hours": summary("device_hours"),
        **step,
        "latency_ms": evaluation("timing.unmerged.latency_ms_mean"),
        "throughput": evaluation("timing.unmerged.throughput_samples_per_s"),
        "peak_memory_mib": summary("peak_memory_mib"),  # None on CPU
        # "phases" (device_hours: the timed phases x ranks), or "loop" for a summary from before "cost"
        "device_hours_definition": "phases" if cost else "loop",
        **{f"{part}_seconds": cost.get(f"{part}_seconds") for part in OTHER_COSTS},
        "others_cpu_share": host.get("others_cpu_share"),
        "probe": probe,  # None: no probe behind the plan
        "probe_seconds": 0.0 if probe is None else probe["seconds"],
        "probe_load_seconds": 0.0 if probe is None else probe["load_seconds"],
    }
    bad = [
        k for k in VALUES if k in row and not _is_number(row[k]) and not (k in OPTIONAL and row[k] is None)
    ]
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


def _charge_probes(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each run's device-hours with its probe charged in full, and amortised over the compared runs made from
    the same probe (equal scores.json hashes); returns the probes, each with the runs that share it."""
    probes: dict[str, dict[str, Any]] = {}
    for row in rows:
        probe = row["probe"]
        if probe is not None and probe["seconds"] is not None:
            shared = probes.setdefault(
                probe["hash"],
                {key: probe[key] for key in ("hash", "scores", "world_size", "seconds", "load_seconds")},
            )
            shared.setdefault("runs", []).append(row["run"])
    for row in rows:
        probe, seconds = row["probe"], row["probe_seconds"]
        shared_by = (
            None if probe is None or probe["hash"] not in probes else len(probes[probe["hash"]]["runs"])
        )
        row["probe_shared_by"] = shared_by
        if seconds is None:
            row["device_hours_with_probe"] = row["device_hours_amortised"] = None
        else:
            row["device_hours_with_probe"] = row["device_hours"] + seconds / 3600
            row["device_hours_amortised"] = row["device_hours"] + seconds / 3600 / (shared_by or 1)
    for shared in probes.values():
        shared["shared_by"] = len(shared["runs"])
        shared["seconds_per_run"] = shared["seconds"] / shared["shared_by"]
    return list(probes.values())


def _warnings(rows: list[dict[str, Any]]) -> list[str]:
    """What makes the cost columns less than comparable: runs timed under different (or heavy) load from
    other work on the host, summaries of the older device-hours definition, probes that cannot be charged."""
    warnings = []
    shares = sorted(
        ((row["others_cpu_share"], row["run"]) for row in rows if row["others_cpu_share"] is not None),
        key=lambda pair: pair[0],
    )
    if len(shares) > 1 and shares[-1][0] - shares[0][0] > LOAD_GAP:
        (low, low_run), (high, high_run) = shares[0], shares[-1]
        warnings.append(
            f"runs timed under different host load: other processes took {high:.2f} of the CPU while "
            f"{high_run} trained but {low:.2f} while {low_run} did (a gap over {LOAD_GAP}): their "
            "device-hours and step times are not comparable"
        )
    busy = [f"{run} ({share:.2f})" for share, run in shares if share > LOAD_BUSY]
    if busy:
        warnings.append(
            f"busy host: other processes took over {LOAD_BUSY} of the CPU while {', '.join(busy)} "
            "trained: their timings are inflated"
        )
    unmeasured = [
        r["run"] for r in rows if r["device_hours_definition"] == "phases" and r["others_cpu_share"] is None
    ]
    if unmeasured and shares:
        warnings.append(
            f"host load not measured for {', '.join(unmeasured)} (no /proc there): whether it was timed "
            "under the others' load cannot be told"
        )
    older = [row["run"] for row in rows if row["device_hours_definition"] == "loop"]
    if older:
        warnings.append(
            f"{len(older)} of {len(rows)} runs have summaries of the older definition (no cost): their "
            "device-hours are the training loop's wall time, not the timed phases, and are not comparable "
            f"with the others': {', '.join(older)}"
            if len(older) < len(rows)
            else "every summary is of the older definition (no cost): device-hours are the training loop's "
            "wall time, not the timed phases (re-run `actlora train` for the paper's definition)"
        )
    for row in rows:
        probe = row["probe"]
        if probe is not None and probe["problem"]:
            charged = "not charged (n/a)" if probe["seconds"] is None else "charged"
            warnings.append(f"{row['run']}: {probe['problem']}: the probe is {charged}")
    return warnings


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
    probes = _charge_probes(rows)

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
        "definitions": DEFINITIONS,
        "warnings": _warnings(rows),
        "probes": probes,
        "glue_average": glue_average(loaded),
        "groups": groups,
        "rows": [rows[i] for index in indices for i in index],  # group by group, the baseline's first
    }


# what makes runs on different tasks the same setting, for the GLUE average (the plan's rule, not its layers,
# which the probe chooses per task)
SETTING_KEYS = ("lora.method", "lora.r", "lora.targets", "rank.k", "rank.tau", "rank.layers", "rank.strategy")


def glue_average(loaded: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[dict[str, Any]] | None:
    """Per setting (method and plan rule, SETTING_KEYS), each task's score (metrics.task_score, mean over
    seeds) and their unweighted mean over tasks (the papers' GLUE average, Tables 3-5). None when the runs
    cover one task."""
    if len({row["task"] for row, _ in loaded}) < 2:
        return None
    every_task = sorted({row["task"] for row, _ in loaded})
    by_setting: dict[str, dict[str, list[float]]] = {}
    for row, config in loaded:
        given = [k for k in SETTING_KEYS if config.get(k) is not None]
        label = ", ".join(f"{k.split('.')[-1]}={config.get(k)}" for k in given)
        if row["task_score"] is not None:
            by_setting.setdefault(label, {}).setdefault(row["task"], []).append(row["task_score"])
    out = []
    for label, tasks in by_setting.items():
        means = {task: statistics.fmean(scores) for task, scores in sorted(tasks.items())}
        out.append({
            "setting": label, "tasks": means, "average": statistics.fmean(means.values()),
            "complete": sorted(means) == every_task,
        })  # fmt: skip
    return out


def _number(value: float, spec: str) -> str:
    text = format(value, spec)
    return format(0.0, spec) if float(text) == 0 else text  # no "-0.00"


def _mean_pm_std(stat: dict[str, float | None], spec: str, n: int) -> str:
    if stat["mean"] is None:
        return "n/a"
    if n == 1:  # one seed: no spread was measured, so none is shown
        return _number(stat["mean"], spec)
    return f"{_number(stat['mean'], spec)} ± {_number(stat['std'], spec)}"


# the Markdown's names for the figures DEFINITIONS explains, in the order the note lists them
MARKDOWN_NAMES = {
    "device_hours": "device-h",
    "probe_seconds": "probe s",
    "device_hours_with_probe": "incl. probe, saved incl. probe %",
    "device_hours_amortised": "amortised, saved incl. probe (amortised) %",
    "saved_pct": "... saved %",
    "other_seconds": "other s (eval / ckpt / load / data)",
    "others_cpu_share": "others' CPU",
}


# a figure a comparison written by an earlier actlora does not hold (read as n/a: the keys added since schema
# version 1 are read with a default, as artifacts.SCHEMAS says)
UNMEASURED: dict[str, float | None] = {"mean": None, "std": None}


def _others(values: dict[str, dict[str, float | None]]) -> str:
    """'eval / ckpt / load / data' seconds, the group's means (n/a for summaries without the cost)."""
    means = [values.get(f"{part}_seconds", UNMEASURED)["mean"] for part in OTHER_COSTS]
    return " / ".join("n/a" if m is None else _number(m, ".1f") for m in means)


def _cell(value: float | None, spec: str) -> str:
    return "n/a" if value is None else _number(value, spec)


def markdown(report: dict[str, Any]) -> str:
    """The groups as a Table 5 style table (mean ± std, n seeds), the cost columns beside device-hours saved,
    any warnings, what each figure is, then each run's group and cost."""
    groups = report["groups"]
    headers, columns = ["group", "n", "metric", "value"], []
    for change in CHANGES:
        if change.key == "device_hours_saved_pct":  # the device-hours themselves and the probe beside them
            headers += ["device-h", "probe s"]
            columns += [("device_hours", ".3g", "values"), ("probe_seconds", ".1f", "values")]
        headers.append(change.header)
        columns.append((change.key, change.spec, "changes"))
    headers.append(MARKDOWN_NAMES["other_seconds"])
    table = [
        [
            g["label"],
            g["n"],
            g["metric_name"],
            _mean_pm_std(g["values"]["metric"], ".4f", g["n"]),
            *(_mean_pm_std(g[where].get(key, UNMEASURED), spec, g["n"]) for key, spec, where in columns),
            _others(g["values"]),
        ]
        for g in groups
    ]
    runs = [
        [
            r["run"],
            r["group"],
            _text(r["seed"]),
            _number(r["metric"], ".4f"),
            _number(r["device_hours"], ".3g"),
            _cell(r.get("probe_seconds"), ".1f"),
            _cell(r.get("device_hours_with_probe"), ".3g"),
            _cell(r.get("device_hours_amortised"), ".3g"),
            _cell(r.get("others_cpu_share"), ".2f"),
        ]
        for r in report["rows"]
    ]
    intro = (
        f"Baseline: {report['baseline_group']} (n={groups[0]['n']}). Cells are mean ± std, {report['std']} "
        "(a group of one seed shows its value alone); "
        "changes compare each run with the baseline group's mean.\n"
    )
    warnings = [f"- **Warning:** {w}" for w in report.get("warnings", [])]
    definitions = report.get("definitions", {})  # none in a comparison from before the cost columns
    notes = [f"- {MARKDOWN_NAMES[key]}: {text}." for key, text in definitions.items()]
    run_headers = ["run", "group", "seed", "value", "device-h", "probe s", "incl. probe", "amortised"]
    runs_table = markdown_table([*run_headers, "others' CPU"], runs)
    parts = [intro, markdown_table(headers, table)]
    if warnings:
        parts.append("\n".join(warnings) + "\n")
    if report.get("glue_average"):
        tasks = sorted({t for row in report["glue_average"] for t in row["tasks"]})
        rows = [
            [row["setting"], *(_cell(row["tasks"].get(t), ".4f") for t in tasks), f"{row['average']:.4f}"
             + ("" if row["complete"] else " (not every task)")]
            for row in report["glue_average"]
        ]  # fmt: skip
        parts.append(
            "GLUE average: per task the mean of its metrics (and of MNLI's two splits), mean over seeds; "
            "then the unweighted mean over tasks.\n\n" + markdown_table(["setting", *tasks, "average"], rows)
        )
    if notes:
        parts.append("\n".join(["Definitions:", *notes]) + "\n")
    return "\n".join([*parts, runs_table])


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
    pages = write_pages(report, out)
    artifacts.write_artifact(out, "comparison", report)
    return [out, *pages, *written]


def write_pages(report: dict[str, Any], out: Path) -> list[Path]:
    """The report's Markdown beside ``out`` (its charts linked where they exist) and its HTML page."""
    from . import html_report

    md = out.with_suffix(".md")
    text = (
        markdown(report)
        + image(out.parent, f"{out.stem}_metric_vs_params.png", "metric against trainable parameters")
        + image(out.parent, f"{out.stem}_step_time.png", "step time by phase")
    )
    artifacts.atomic_write_text(md, text)
    return [md, html_report.write(md, text, f"comparison: {report['baseline_group']} as baseline")]
