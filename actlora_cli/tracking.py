"""Experiment tracking (train.report_to): TensorBoard, Weights & Biases, MLflow and Trackio.

One interface for every tool: ``start`` with the run's settings, ``log`` numbers at a step, ``finish``. The
train loop reports the resolved config and the layer plan at the start; loss, learning rate, epoch and
samples/s every train.logging_steps; every evaluation's metrics; the summary's numbers at the end. Each tool
is an optional extra, imported only when train.report_to names it, and only rank 0 reports.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from . import ui
from .config import Config
from .errors import ConfigError, Problem

if TYPE_CHECKING:
    from .selection import Plan

# the W&B project, MLflow experiment and Trackio project, unless WANDB_PROJECT or MLFLOW_EXPERIMENT_NAME says
PROJECT = "actlora"


class Tracker(Protocol):
    def start(self, name: str, params: dict[str, Any], step: int) -> None: ...

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def finish(self, failed: bool) -> None: ...


@dataclass
class TensorBoard:
    """Event files in <output_dir>/tensorboard: scalars, and the settings as a text table."""

    run_dir: Path

    def start(self, name: str, params: dict[str, Any], step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # a run resumed from step N repeats the steps after it: purge_step hides the first attempt's events
        # from N + 1 on, so the curve continues instead of doubling back
        self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=step + 1 if step else None)
        rows = "\n".join(f"| {k} | {json.dumps(v)} |" for k, v in params.items())
        self.writer.add_text("config", f"run {name}\n\n| setting | value |\n| --- | --- |\n{rows}", step)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def finish(self, failed: bool) -> None:
        self.writer.close()


@dataclass
class WandB:
    """A W&B run in project actlora (or WANDB_PROJECT), its files under <output_dir>/wandb (or WANDB_DIR);
    WANDB_MODE=offline keeps it on disk for ``wandb sync``."""

    run_dir: Path

    def start(self, name: str, params: dict[str, Any], step: int) -> None:
        import wandb

        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or PROJECT,
            name=name,
            config=params,
            dir=None if os.environ.get("WANDB_DIR") else str(self.run_dir),
            reinit="create_new",  # one process may train several runs (sweeps, studies, the Python API)
            settings=wandb.Settings(quiet=ui.quiet()),  # --quiet and --json: W&B's warnings only
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


def mlflow_uri(run_dir: Path) -> str:
    """MLFLOW_TRACKING_URI when set (a server, a shared database), else a SQLite store in the run folder
    (MLflow 3 refuses its older file store unless told otherwise)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"


@dataclass
class MLflow:
    """An MLflow run in experiment actlora (or MLFLOW_EXPERIMENT_NAME), through a client of its own: the
    process-wide tracking URI and active run that mlflow's module functions keep are left alone."""

    run_dir: Path

    def start(self, name: str, params: dict[str, Any], step: int) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Param

        self.client = MlflowClient(mlflow_uri(self.run_dir))
        experiment_name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or PROJECT
        found = self.client.get_experiment_by_name(experiment_name)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment_name)
        self.run_id = self.client.create_run(experiment_id, run_name=name).info.run_id
        values = [Param(k, v if isinstance(v, str) else json.dumps(v)) for k, v in params.items()]
        for i in range(0, len(values), 100):  # log_batch takes at most 100 params
            self.client.log_batch(self.run_id, params=values[i : i + 100])

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def finish(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


@dataclass
class Trackio:
    """A Trackio run in project actlora, stored locally (TRACKIO_DIR, else Hugging Face's cache folder);
    ``trackio show`` opens its dashboard."""

    run_dir: Path  # unused: Trackio keeps one store for every project

    def start(self, name: str, params: dict[str, Any], step: int) -> None:
        import trackio

        with to_stderr():
            self.run = trackio.init(project=PROJECT, name=name, config=params)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self, failed: bool) -> None:
        import trackio

        with to_stderr():
            trackio.finish()  # not run.finish(): trackio's exit hook would finish its current run again


TRACKERS: dict[str, type] = {"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow, "trackio": Trackio}


def to_stderr() -> contextlib.AbstractContextManager:
    """A tool's own messages to stderr: stdout carries only results (--json)."""
    return contextlib.redirect_stdout(sys.stderr)


def required(name: str) -> list[str]:
    """The modules tracker ``name`` imports: its package, and for MLflow's SQLite store (the default)
    SQLAlchemy and Alembic, which mlflow-skinny leaves out."""
    if name == "mlflow" and not os.environ.get("MLFLOW_TRACKING_URI"):
        return ["mlflow", "sqlalchemy", "alembic"]
    return [name]


def check(report_to: list[str]) -> None:
    """Every tracker's packages are installed, else a ConfigError naming the extra (every rank checks, so all
    stop together)."""
    problems = []
    for name in report_to:
        missing = [m for m in required(name) if importlib.util.find_spec(m) is None]
        if missing:
            problems.append(Problem(
                "train.report_to",
                f"{name} needs {', '.join(missing)} (not installed)",
                f"pip install 'actlora[{name}]', or drop {name} from train.report_to",
            ))  # fmt: skip
    if problems:
        raise ConfigError(problems)


def params(cfg: Config, plan: Plan) -> dict[str, Any]:
    """What a run reports as its settings: the resolved config as dotted keys, and the layer plan."""
    return {**cfg.flat(), "plan.layers": plan.layers, "plan.source": plan.source}


class Tracking:
    """The trackers train.report_to names, on rank 0 (none on the other ranks): each call goes to each."""

    def __init__(self, cfg: Config, is_main: bool):
        check(cfg.train.report_to)
        self.name = cfg.train.run_name or cfg.run_dir.resolve().name
        names = cfg.train.report_to if is_main else []
        self.trackers: list[Tracker] = [TRACKERS[n](cfg.run_dir) for n in names]

    @classmethod
    def off(cls) -> Tracking:
        """No trackers (the probe's training regime steps the loop but is no run to report)."""
        tracking = cls.__new__(cls)
        tracking.name, tracking.trackers = "", []
        return tracking

    @contextlib.contextmanager
    def session(self, settings: dict[str, Any], step: int) -> Iterator[None]:
        """Start every tracker (``step``: where a resumed run continues); an exception before ``finish`` ends
        the started ones as failed."""
        pending, self.trackers = self.trackers, []
        try:
            for tracker in pending:
                tracker.start(self.name, settings, step)
                self.trackers.append(tracker)
            yield
        except BaseException:
            for tracker in self.trackers:
                tracker.finish(failed=True)
            self.trackers = []
            raise

    def log(self, metrics: dict[str, Any], step: int) -> None:
        numbers = {k: float(v) for k, v in metrics.items()}
        for tracker in self.trackers:
            tracker.log(numbers, step)

    def finish(self, summary: dict[str, Any]) -> None:
        """The summary's top-level numbers (steps, seconds, samples/s, parameters, ...) as summary/*, at the
        last step; then every tracker ends."""
        numbers = {f"summary/{k}": v for k, v in summary.items() if is_number(v) and k != "schema_version"}
        self.log(numbers, summary["steps"])
        for tracker in self.trackers:
            tracker.finish(failed=False)
        self.trackers = []


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
