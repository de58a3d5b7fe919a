"""The sweep: a grid of methods x k x plan strategies x seeds x tasks, one run folder per point, resumable.

Layout under the sweep folder ``<out>``::

    sweep.json                          the manifest: every point, its folder and status
    <task>/probe/scores.json            one probe per task (probe.seed), shared by its points
    <task>/<method>-k<k>-seed<s>/       an ordinary run folder (scores, selection, adapter, eval.json); a plan
                                        strategy other than the guided one is named in it: -last-, -random2-
    <task>/comparison.json, .md, .html, *.png  the task's points (seeds grouped) against LoRA on every layer

Everything is checked before anything runs: every point's config is validated (all problems reported
together), then the probes run and every k is checked against the model's layer count, and only then does
training start. What is already on disk is reused when it was made from the same resolved config.
"""

from __future__ import annotations

import contextlib
import difflib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from . import artifacts, runfolder, ui
from .checkpoints import last_checkpoint
from .compare import compare_runs, write_report
from .config import CLEAR, METHODS, STRATEGIES, Config, parse_list
from .errors import ActloraError, ArtifactError, ConfigError, Problem
from .evaluation import run_eval
from .probe import run_probe
from .rank import run_rank
from .train import run_train

Action = Literal["skip", "eval", "resume", "train"]
BASELINE = ("lora", "all")  # the paper's baseline: LoRA on every layer


@dataclass(frozen=True)
class Grid:
    """The values swept; every point is one of each."""

    methods: list[str]
    ks: list[int | str]
    seeds: list[int]
    tasks: list[str]
    strategies: tuple[str, ...] = ("scores",)  # rank.strategy values
    draws: int = 1  # random plans per k (rank.seed 0..draws-1)

    def plans(self) -> list[tuple[int | str, str, int]]:
        """(k, strategy, draw) of every plan: each k with each strategy (random: its draws); every layer
        (k='all') is one plan whatever the strategy."""
        plans = []
        for k in self.ks:
            for strategy in ["scores"] if k == "all" else self.strategies:
                plans += [(k, strategy, d) for d in (range(self.draws) if strategy == "random" else [0])]
        return plans


@dataclass(frozen=True)
class Point:
    """One run of the grid: the base config with this point's method, k, seed, task and folder."""

    task: str
    method: str
    k: int | str
    seed: int
    cfg: Config
    strategy: str = "scores"
    draw: int = 0

    @property
    def name(self) -> str:
        # the guided plan keeps the name sweeps have always used; other strategies are named in it
        plan = "" if self.strategy == "scores" else f"-{self.strategy}"
        plan += str(self.draw) if self.strategy == "random" else ""
        return f"{self.method}-k{self.k}{plan}-seed{self.seed}"

    @property
    def folder(self) -> Path:
        return self.cfg.run_dir


# ---------------------------------------------------------------------------------------------------------
# The grid from the command line's comma-separated lists


def _values(text: str | None, flag: str, default: Any, example: str, why: str = "") -> list[str]:
    if text is None:
        if default is None:
            what = why or "not given, and the config sets no value for it"
            raise ConfigError([Problem(flag, what, f"e.g. {flag} {example}")])
        return [str(default)]
    values = parse_list(text)
    if not values:
        raise ConfigError([Problem(flag, f"an empty list ('{text}')", f"e.g. {flag} {example}")])
    return values


def _k(value: str) -> int | str:
    if value == "all":
        return value
    k = int(value)  # ValueError: reported by the caller, naming the flag
    if k < 1:
        raise ValueError(value)
    return k


def parse_grid(
    base: Config,
    methods: str | None,
    ks: str | None,
    seeds: str | None,
    tasks: str | None,
    strategies: str | None = None,
    draws: int = 1,
) -> Grid:
    """Comma-separated flag values -> the grid; a flag left out takes the config's single value. Every bad
    value is reported together, each naming its flag."""
    problems: list[Problem] = []
    parsed: dict[str, list] = {}
    for flag, text, default, example, convert in (
        ("--methods", methods, base.lora.method, "lora,ia3", str),
        ("--k", ks, base.rank.k, "all,3", _k),
        ("--seeds", seeds, base.train.seed, "0,1,2", int),
        ("--tasks", tasks, base.task.name, "movies,tweets", str),
        ("--strategies", strategies, base.rank.strategy, "scores,last,random", str),
    ):
        why = (
            "not given; the config chooses k by rank.tau, which a sweep does not vary"
            if flag == "--k" and base.rank.tau is not None
            else ""
        )
        try:
            raw = _values(text, flag, default, example, why)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        values = []
        for value in raw:
            try:
                values.append(convert(value))
            except ValueError:
                what = "a whole number >= 1 or 'all'" if flag == "--k" else "a whole number"
                problems.append(Problem(flag, f"expected {what}, got '{value}'", f"e.g. {flag} {example}"))
        twice = sorted({str(v) for v in values if values.count(v) > 1})
        if twice:
            problems.append(Problem(flag, f"{', '.join(twice)} given more than once", "list each value once"))
        parsed[flag] = values
    for method in parsed.get("--methods", []):
        if method not in METHODS:
            close = difflib.get_close_matches(method, METHODS, n=1)
            problems.append(
                Problem(
                    "--methods",
                    f"unknown method '{method}'",
                    f"did you mean '{close[0]}'?" if close else f"methods: {', '.join(METHODS)}",
                )
            )
    for strategy in parsed.get("--strategies", []):
        if strategy not in STRATEGIES:
            problems.append(
                Problem(
                    "--strategies", f"unknown strategy '{strategy}'", f"strategies: {', '.join(STRATEGIES)}"
                )
            )
    if draws < 1:
        problems.append(Problem("--draws", f"expected a whole number >= 1, got {draws}", "e.g. --draws 5"))
    if problems:
        raise ConfigError(problems)
    return Grid(
        parsed["--methods"],
        parsed["--k"],
        parsed["--seeds"],
        parsed["--tasks"],
        tuple(parsed["--strategies"]),
        draws,
    )


# ---------------------------------------------------------------------------------------------------------
# Points and what each still needs


def probe_config(base: Config, task: str, out: Path) -> Config:
    """The task's one probe: the base config (its probe.seed, not a training seed) in
    ``<out>/<task>/probe``."""
    return base.with_overrides({"task.name": task, "output_dir": str(Path(out) / task / "probe")})


def build_points(base: Config, grid: Grid, out: Path) -> list[Point]:
    """Every point's validated config; the problems of all points (and unknown tasks) are raised together."""
    from .data import task_spec

    problems: list[Problem] = []
    points: list[Point] = []
    for task in grid.tasks:
        for method in grid.methods:
            for k, strategy, draw in grid.plans():
                for seed in grid.seeds:
                    name = Point(task, method, k, seed, base, strategy, draw).name
                    folder = Path(out) / task / name
                    # the grid's k and strategy are the whole rule: they replace the file's tau or layers
                    values = {
                        "task.name": task, "output_dir": str(folder), "lora.method": method, "rank.k": k,
                        "rank.tau": CLEAR, "rank.layers": CLEAR, "rank.strategy": strategy, "rank.seed": draw,
                        "train.seed": seed,
                    }  # fmt: skip
                    try:
                        cfg = base.with_overrides(values)
                    except ConfigError as exc:
                        point = f"point {task}/{name}"
                        problems += [Problem(f"{p.where} ({point})", p.what, p.fix) for p in exc.problems]
                        continue
                    points.append(Point(task, method, k, seed, cfg, strategy, draw))
    for task in dict.fromkeys(p.task for p in points):
        try:
            task_spec(next(p for p in points if p.task == task).cfg.task)
        except ActloraError as exc:
            problems += [Problem("--tasks", p.what, p.fix) for p in exc.problems]
    if problems:
        raise ConfigError(problems)
    return points


def _made_from(path: Path, kind: str, cfg: Config) -> bool:
    """``path`` is a readable ``kind`` artefact made from exactly this resolved config."""
    try:
        doc = artifacts.read_artifact(path, kind)
    except ArtifactError:
        return False
    return (doc.get("provenance") or {}).get("config_hash") == cfg.hash()


def next_action(cfg: Config) -> Action:
    """What a point still needs: nothing, its eval, the rest of its training, or everything."""
    run = cfg.run_dir
    trained = _made_from(run / "train_summary.json", "train_summary", cfg)  # written last, after the weights
    if trained and _made_from(run / "eval.json", "eval", cfg):
        return "skip"
    if trained:
        return "eval"
    # a checkpoint carries no config hash; run_train writes config.resolved.yaml after clearing any older
    # run's checkpoints, so a checkpoint beside this config's resolved file was made under this config
    if (
        last_checkpoint(run / "checkpoints") is not None
        and _resolved_hash(run / "config.resolved.yaml") == cfg.hash()
    ):
        return "resume"
    return "train"


def _resolved_hash(path: Path) -> str | None:
    """The config hash of a run folder's config.resolved.yaml (None when missing or no longer valid)."""
    try:
        return Config.model_validate(yaml.safe_load(path.read_text())).hash()
    except (OSError, yaml.YAMLError, ValidationError, TypeError):
        return None


def plan_sweep(base: Config, grid: Grid, out: Path) -> dict[str, Any]:
    """The points, what each needs and which probes must run; reads the disk, writes nothing."""
    points = build_points(base, grid, out)
    actions = [next_action(p.cfg) for p in points]
    probes = {}
    for task in grid.tasks:
        cfg = probe_config(base, task, out)
        needed = any(
            p.task == task and p.k != "all" and a == "train" for p, a in zip(points, actions, strict=True)
        )
        done = _made_from(cfg.run_dir / "scores.json", "scores", cfg)
        probes[task] = {
            "folder": str(cfg.run_dir),
            "action": ("reuse" if done else "probe") if needed else "none",
            "status": "pending" if needed else "not needed",
        }
    entries = [
        {
            "task": p.task,
            "method": p.method,
            "k": p.k,
            "strategy": p.strategy,
            "draw": p.draw,
            "seed": p.seed,
            "name": p.name,
            "folder": str(p.folder),
            "config_hash": p.cfg.hash(),
            "action": action,
            "status": "pending",
        }
        for p, action in zip(points, actions, strict=True)
    ]
    return {"points": points, "actions": actions, "entries": entries, "probes": probes}


# ---------------------------------------------------------------------------------------------------------
# Running


class _Manifest:
    """``<out>/sweep.json``, rewritten (atomically) after every change, so an interrupted sweep shows where it
    stopped."""

    def __init__(self, base: Config, grid: Grid, out: Path, plan: dict[str, Any]):
        self.path = Path(out) / "sweep.json"
        self.doc: dict[str, Any] = {
            "out": str(out),
            "grid": {
                "methods": grid.methods,
                "k": grid.ks,
                "seeds": grid.seeds,
                "tasks": grid.tasks,
                "strategies": list(grid.strategies),
                "draws": grid.draws,
            },  # fmt: skip
            "base_config_hash": base.hash(),
            "total": len(plan["points"]),
            "done": 0,
            "finished": False,
            "probes": plan["probes"],
            "points": plan["entries"],
            "comparisons": {},
            "provenance": artifacts.provenance(base.hash()),
        }

    def update(self, entry: dict[str, Any] | None = None, **fields: Any) -> None:
        (entry if entry is not None else self.doc).update(fields)
        self.doc["done"] = sum(e["status"] == "done" for e in self.doc["points"])
        self.doc["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        artifacts.write_artifact(self.path, "sweep", self.doc)

    @contextlib.contextmanager
    def step(self, entry: dict[str, Any]) -> Iterator[None]:
        """``entry`` (a probe or a point) is running, then done, or failed / interrupted with the error."""
        started = time.perf_counter()
        self.update(entry, status="running")
        try:
            yield
        except BaseException as exc:
            self.update(
                entry,
                status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                error=f"{type(exc).__name__}: {exc}",
            )
            raise
        self.update(entry, status="done", seconds=round(time.perf_counter() - started, 3))


def _run_point(point: Point, action: Action, scores: Path | None) -> None:
    if action == "train":
        # an older config's checkpoints go first: a point stopped after rank (which writes this config's
        # resolved file) and before train set them aside would otherwise look resumable next time
        runfolder.remove(point.folder / "checkpoints", point.folder)
        if point.k != "all":
            assert scores is not None
            # each point ranks its own copy of the task's probe: its selection.json names the scores it used
            artifacts.atomic_write_text(point.folder / "scores.json", scores.read_text())
            run_rank(point.cfg)
    if action in ("train", "resume"):
        # a point trained afresh replaces whatever an older config left in its folder
        run_train(point.cfg, resume=action == "resume", overwrite=action == "train")
    if action != "skip":
        run_eval(point.cfg)


def _check_k(points: list[Point], scores_doc: dict[str, Any], task: str) -> None:
    layers = len(scores_doc["scores"])
    too_big = sorted({p.k for p in points if p.task == task and p.k != "all" and p.k > layers})
    if too_big:
        raise ConfigError(
            [
                Problem(
                    "--k",
                    f"k={', '.join(map(str, too_big))} but {scores_doc['model']['name']} has {layers} layers",
                    f"choose k in 1..{layers} or 'all'",
                )
            ]
        )


def compare_task(task: str, points: list[Point]) -> dict[str, Any]:
    """The task's points against its LoRA-on-every-layer points (compare_runs groups the seeds, so the
    baseline is that seed group); against the first point, with a note saying so, when the grid has none."""
    base = next((p for p in points if (p.method, p.k) == BASELINE), None)
    note = None
    if base is None:
        base = points[0]
        note = f"the grid has no lora k=all point for {task}: the baseline is {base.method} k={base.k}"
    report = compare_runs([p.folder for p in points if p is not base], base.folder)
    return {**report, "task": task, "note": note}


def run_sweep(base: Config, grid: Grid, out: Path, dry_run: bool = False) -> dict[str, Any]:
    """Run every point of the grid that is not already done; returns the manifest (for ``dry_run``: the plan,
    with nothing written). Stops at the first failing point, recording it in the manifest."""
    out = Path(out)
    plan = plan_sweep(base, grid, out)
    if dry_run:
        return {
            "out": str(out),
            "total": len(plan["points"]),
            "probes": plan["probes"],
            "points": plan["entries"],
        }
    points: list[Point] = plan["points"]
    manifest = _Manifest(base, grid, out, plan)
    manifest.update()

    # the probes first, so that a k beyond the model's layers stops the sweep before any training
    scores: dict[str, Path] = {}
    for task, probe in plan["probes"].items():
        if probe["action"] == "none":
            continue
        cfg = probe_config(base, task, out)
        with manifest.step(probe):
            if probe["action"] == "probe":
                ui.note(f"probe {task} -> {cfg.run_dir}")
                doc = run_probe(cfg)
            else:
                ui.note(f"probe {task}: reusing {cfg.run_dir / 'scores.json'}")
                doc = artifacts.read_artifact(cfg.run_dir / "scores.json", "scores")
        _check_k(points, doc, task)  # after the probe's step: the probe itself succeeded
        scores[task] = cfg.run_dir / "scores.json"

    for i, (point, action, entry) in enumerate(
        zip(points, plan["actions"], manifest.doc["points"], strict=True), 1
    ):
        ui.note(
            f"[bold][{i}/{len(points)}][/] {point.task}/{point.name}: "
            + {
                "skip": "done already",
                "eval": "eval",
                "resume": "resume training, eval",
                "train": "train, eval",
            }[action]
        )
        with manifest.step(entry):
            _run_point(point, action, scores.get(point.task))

    by_folder = {str(p.folder): entry for p, entry in zip(points, manifest.doc["points"], strict=True)}
    for task in grid.tasks:
        report = compare_task(task, [p for p in points if p.task == task])
        json_path, md_path, html_path, *plots = write_report(report, out / task / "comparison.json")
        manifest.doc["comparisons"][task] = {
            "json": str(json_path),
            "markdown": str(md_path),
            "html": str(html_path),
            "plots": [str(path) for path in plots],
            "note": report["note"],
            # what compare warned about (runs timed under different load, older cost definitions, ...): a
            # reader of the manifest alone must see it too
            "warnings": report.get("warnings", []),
        }
        for row in report["rows"]:
            by_folder[row["run"]].update(
                {
                    key: row[key]
                    for key in ("group", "metric_name", "metric", "trainable_parameters", "step_ms")
                }
            )
    manifest.update(finished=True)
    return manifest.doc
