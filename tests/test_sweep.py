"""The sweep: a grid end to end on the tiny BERT, resuming (skip / eval only / resume training / the rest
after a failure), one probe per task, and bad grids refused before anything runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from actlora_cli import sentiment_data, sweep
from actlora_cli.cli import app
from actlora_cli.config import Config
from actlora_cli.errors import ConfigError
from actlora_cli.synthetic import write_task
from tests.conftest import poison_loss, tiny_config

runner = CliRunner()


@pytest.fixture(scope="module")
def sentiment_cache(tmp_path_factory) -> Path:
    """A prepared packaged-sentiment cache whose movies and tweets are tiny synthetic tasks in the tiny
    tokenizer's words, so that sweeps over task.name run offline in seconds."""
    root = tmp_path_factory.mktemp("sentiment")
    for seed, domain in enumerate(("movies", "tweets")):
        files = write_task(root / f"{domain}-csv", n_train=48, n_val=24, seed=seed)
        for split, path in files.items():
            with open(path) as handle:
                rows = [
                    {
                        "id": str(i),
                        "text": r["text"],
                        "rating": 2.0 if r["label"] == "1" else -2.0,
                        "label": int(r["label"]),
                    }
                    for i, r in enumerate(csv.DictReader(handle))
                ]
            (root / domain).mkdir(exist_ok=True)
            (root / domain / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "manifest.json").write_text(json.dumps({"format_version": sentiment_data.FORMAT_VERSION}))
    assert sentiment_data.is_prepared(root)
    return root


@pytest.fixture
def base(tmp_path, tiny_models, tiny_task, sentiment_cache) -> Config:
    cfg = tiny_config(
        tiny_models["bert"], tiny_task, tmp_path / "ignored", rank={"k": "all"}, train={"max_steps": 2}
    )
    cfg["task"] = {"name": "movies", "data_dir": str(sentiment_cache), "max_length": 32}
    return Config.model_validate(cfg)


class Calls:
    """Wraps the sweep module's stage functions, recording (stage, run folder, resume) per call."""

    def __init__(self, monkeypatch, fail_train_at: int | None = None):
        self.log: list[tuple[str, str, bool]] = []
        for stage in ("run_probe", "run_rank", "run_train", "run_eval"):
            real = getattr(sweep, stage)

            def wrapped(cfg, *args, _real=real, _stage=stage, **kwargs):
                self.log.append((_stage, cfg.run_dir.name, kwargs.get("resume", False)))
                if _stage == "run_train" and self.count("run_train") == fail_train_at:
                    raise RuntimeError("the machine went away")
                return _real(cfg, *args, **kwargs)

            monkeypatch.setattr(sweep, stage, wrapped)

    def count(self, stage: str) -> int:
        return sum(s == stage for s, _, _ in self.log)

    def folders(self, stage: str) -> list[str]:
        return [f for s, f, _ in self.log if s == stage]


def _grid(base: Config, methods="lora", k="all,2", seeds="0", tasks="movies") -> sweep.Grid:
    return sweep.parse_grid(base, methods, k, seeds, tasks)


def _manifest(out: Path) -> dict:
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["kind"] == "sweep" and doc["schema_version"] == 1
    return doc


def test_grid_end_to_end_then_nothing_to_do_then_partial_resume(tmp_path, base, monkeypatch):
    out = tmp_path / "sweep"
    grid = _grid(base, methods="lora,ia3", k="all,2", seeds="0,1", tasks="movies,tweets")
    calls = Calls(monkeypatch)
    doc = sweep.run_sweep(base, grid, out)

    names = [f"{m}-k{k}-seed{s}" for m in ("lora", "ia3") for k in ("all", "2") for s in (0, 1)]
    for task in ("movies", "tweets"):
        assert sorted(p.name for p in (out / task).iterdir() if p.is_dir()) == sorted([*names, "probe"])
        for name in names:
            run = out / task / name
            assert json.loads((run / "eval.json").read_text())["kind"] == "eval"
            resolved = yaml.safe_load((run / "config.resolved.yaml").read_text())
            summary = json.loads((run / "train_summary.json").read_text())
            assert (resolved["task"]["name"], resolved["train"]["seed"], summary["lora"]["method"]) == (
                task,
                int(name[-1]),
                name.split("-")[0],
            )
            if "-k2-" in name:
                # each k=2 point ranked its own copy of its task's probe
                assert (run / "scores.json").read_bytes() == (
                    out / task / "probe" / "scores.json"
                ).read_bytes()
                assert json.loads((run / "selection.json").read_text())["k"] == 2
                assert len(summary["plan"]["layers"]) == 2
        # one comparison per task: the seeds of a point form a group, the lora k=all group is the baseline
        comparison = json.loads((out / task / "comparison.json").read_text())
        assert comparison["task"] == task and comparison["note"] is None
        # the manifest carries compare's warnings with the comparison (a reader of sweep.json sees them)
        assert doc["comparisons"][task]["warnings"] == comparison["warnings"]
        assert Path(comparison["baseline"]).name == "lora-kall-seed0"
        assert [
            (g["method"], len(g["layers"]), g["seeds"], g["is_baseline"]) for g in comparison["groups"]
        ] == [
            ("lora", 4, [0, 1], True),
            ("lora", 2, [0, 1], False),
            ("ia3", 4, [0, 1], False),
            ("ia3", 2, [0, 1], False),
        ]
        assert sorted(Path(r["run"]).name for r in comparison["rows"]) == sorted(names)
        assert "lora [all]" in (out / task / "comparison.md").read_text()
    # the probe ran once per task, in the task's probe folder, with the probe's seed
    assert calls.folders("run_probe") == ["probe", "probe"]
    assert json.loads((out / "movies" / "probe" / "scores.json").read_text())["seed"] == base.probe.seed
    assert calls.count("run_train") == calls.count("run_eval") == 16 and calls.count("run_rank") == 8

    manifest = _manifest(out)
    assert manifest["total"] == manifest["done"] == 16 and manifest["finished"]
    assert all(p["status"] == "done" and p["action"] == "train" for p in manifest["points"])
    assert all(isinstance(p["trainable_parameters"], int) and p["step_ms"] > 0 for p in manifest["points"])
    assert doc["points"] == manifest["points"]

    # again: nothing runs, and the dry run says so
    calls.log.clear()
    assert {p["action"] for p in sweep.run_sweep(base, grid, out, dry_run=True)["points"]} == {"skip"}
    sweep.run_sweep(base, grid, out)
    assert calls.log == []
    assert {p["action"] for p in _manifest(out)["points"]} == {"skip"}

    # a lost eval.json -> eval only; a lost summary and adapter beside a checkpoint -> resume, then eval;
    # another config (a --set) -> everything again, probes included
    (out / "movies" / "lora-kall-seed0" / "eval.json").unlink()
    resumed = out / "tweets" / "ia3-k2-seed1"
    for name in ("train_summary.json", "eval.json"):
        (resumed / name).unlink()
    assert (resumed / "checkpoints" / "last").is_dir()
    plan = sweep.run_sweep(base, grid, out, dry_run=True)
    assert {(p["task"], p["name"]): p["action"] for p in plan["points"] if p["action"] != "skip"} == {
        ("movies", "lora-kall-seed0"): "eval",
        ("tweets", "ia3-k2-seed1"): "resume",
    }
    assert not (resumed / "eval.json").exists()  # the dry run wrote nothing
    sweep.run_sweep(base, grid, out)
    assert calls.log == [
        ("run_eval", "lora-kall-seed0", False),
        ("run_train", "ia3-k2-seed1", True),
        ("run_eval", "ia3-k2-seed1", False),
    ]

    calls.log.clear()
    changed = base.model_copy(update={"train": base.train.model_copy(update={"lr": 1e-3})})
    plan = sweep.run_sweep(changed, grid, out, dry_run=True)
    assert {p["action"] for p in plan["points"]} == {"train"}
    assert {t: p["action"] for t, p in plan["probes"].items()} == {"movies": "probe", "tweets": "probe"}
    assert calls.log == []


def test_interrupted_sweep_resumes_with_the_rest(tmp_path, base, monkeypatch):
    out = tmp_path / "sweep"
    grid = _grid(base, k="2,3", seeds="0,1")  # no lora k=all point: compared against the first point
    names = ["lora-k2-seed0", "lora-k2-seed1", "lora-k3-seed0", "lora-k3-seed1"]
    calls = Calls(monkeypatch, fail_train_at=3)
    with pytest.raises(RuntimeError, match="went away"):
        sweep.run_sweep(base, grid, out)
    manifest = _manifest(out)
    assert [p["status"] for p in manifest["points"]] == ["done", "done", "failed", "pending"]
    assert manifest["done"] == 2 and not manifest["finished"]
    assert "went away" in manifest["points"][2]["error"]

    calls = Calls(monkeypatch)
    sweep.run_sweep(base, grid, out)
    assert calls.count("run_probe") == 0  # the first run's probe is reused
    assert calls.folders("run_train") == calls.folders("run_eval") == names[2:]
    assert all(p["status"] == "done" for p in _manifest(out)["points"])
    comparison = json.loads((out / "movies" / "comparison.json").read_text())
    assert Path(comparison["baseline"]).name == "lora-k2-seed0"
    assert comparison["note"] == "the grid has no lora k=all point for movies: the baseline is lora k=2"
    assert [g["seeds"] for g in comparison["groups"]] == [[0, 1], [0, 1]]
    assert _manifest(out)["comparisons"]["movies"]["note"] == comparison["note"]


def test_k_beyond_the_layers_stops_after_the_probe_before_training(tmp_path, base, monkeypatch):
    calls = Calls(monkeypatch)
    with pytest.raises(ConfigError, match="k=9 but .* has 4 layers"):
        sweep.run_sweep(base, _grid(base, k="all,9"), tmp_path / "sweep")
    assert calls.count("run_probe") == 1 and calls.count("run_train") == 0
    assert _manifest(tmp_path / "sweep")["probes"]["movies"]["status"] == "done"  # the probe itself worked


def _invoke(*args):
    result = runner.invoke(app, ["sweep", *args])
    return result, result.output + (result.stderr if result.stderr_bytes is not None else "")


@pytest.fixture
def base_yaml(tmp_path, base) -> str:
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(base.to_dict()))
    return str(path)


@pytest.mark.parametrize(
    ("flags", "named", "says"),
    [
        (["--methods", "lora,loar"], "--methods", "did you mean 'lora'"),
        (["--k", "all,three"], "--k", "got 'three'"),
        (["--k", "0"], "--k", "got '0'"),
        (["--seeds", " , "], "--seeds", "an empty list"),
        (["--seeds", "0,x"], "--seeds", "got 'x'"),
        (["--seeds", "1,1"], "--seeds", "1 given more than once"),
        (["--tasks", "movies,tweets,moviez"], "--tasks", "unknown task 'moviez'"),
        # only the custom task's points are invalid: still refused before the first point runs
        (["--tasks", "movies,custom"], "task", "a custom task needs task.files"),
        (["--set", "train.lr=-1"], "train.lr", "greater than 0"),
        # a config that picks k by tau: the sweep varies k only, and says so
        (["--set", "rank.k=null", "--set", "rank.tau=0.5"], "--k", "chooses k by rank.tau"),
    ],
)
def test_bad_grid_exits_2_naming_the_flag_and_writes_nothing(
    tmp_path, base_yaml, monkeypatch, flags, named, says
):
    calls = Calls(monkeypatch)
    result, text = _invoke("--config", base_yaml, "--out", str(tmp_path / "sweep"), *flags)
    assert result.exit_code == 2, text
    assert named in text and says in text and "Traceback" not in text
    assert not (tmp_path / "sweep").exists() and calls.log == []


def test_dry_run_lists_points_and_writes_nothing(tmp_path, base_yaml, monkeypatch):
    calls = Calls(monkeypatch)
    out = tmp_path / "sweep"
    result, text = _invoke(
        "-c",
        base_yaml,
        "--out",
        str(out),
        "--methods",
        "lora",
        "--k",
        "all,2",
        "--seeds",
        "0,1",
        "--tasks",
        "movies,tweets",
        "--dry-run",
    )
    assert result.exit_code == 0, text
    assert "8 points" in text and text.count("lora-kall-seed0") == 2 and "train" in text
    assert "probe movies: probe" in text
    assert not out.exists() and calls.log == []


def test_cli_runs_and_prints_the_summary_and_comparison(tmp_path, base_yaml):
    out = tmp_path / "sweep"
    args = ("-c", base_yaml, "--out", str(out), "--methods", "lora,full", "--k", "all,2")
    result, text = _invoke(*args)
    assert result.exit_code == 0, text
    assert "[4/4] movies/full-k2-seed0: train, eval" in text
    assert "trainable" in text and "## movies" in text and "lora [all]" in text
    assert (out / "movies" / "full-k2-seed0" / "model").is_dir()
    result, text = _invoke(*args)
    assert result.exit_code == 0, text
    assert "[4/4] movies/full-k2-seed0: done already" in text and "train, eval" not in text


def test_a_moved_or_differently_spelled_sweep_folder_is_still_done(tmp_path, base, monkeypatch):
    """The config hash leaves out where a run is written: the same sweep named by an absolute path, a relative
    one, or after the folder moved, skips every finished point instead of retraining (and wiping) them."""
    import os
    import shutil

    grid = _grid(base, k="all,2")
    sweep.run_sweep(base, grid, tmp_path / "sweep")
    calls = Calls(monkeypatch)
    monkeypatch.chdir(tmp_path)
    sweep.run_sweep(base, grid, Path("sweep"))  # relative spelling of the same folder
    shutil.move(str(tmp_path / "sweep"), str(tmp_path / "moved"))
    plan = sweep.run_sweep(base, grid, Path(os.path.abspath("moved")), dry_run=True)
    assert calls.log == [] and {p["action"] for p in plan["points"]} == {"skip"}


def test_a_point_that_failed_mid_training_resumes_from_its_checkpoint(tmp_path, base, monkeypatch):
    """A real mid-run stop (a NaN at step 5, checkpoint kept at step 4): the rerun resumes that point from its
    checkpoint, finishes its 6 steps and evaluates, instead of starting it afresh."""
    from actlora_cli import train

    cfg = base.model_copy(
        update={"train": base.train.model_copy(update={"max_steps": None, "save_every": 2})}
    )
    grid = _grid(cfg, k="all")
    real = poison_loss(monkeypatch, at_call=5)
    with pytest.raises(train.NonFiniteLoss):
        sweep.run_sweep(cfg, grid, tmp_path / "sweep")
    monkeypatch.setattr(train, "compute_loss", real)
    assert [p["status"] for p in _manifest(tmp_path / "sweep")["points"]] == ["failed"]
    assert sweep.run_sweep(cfg, grid, tmp_path / "sweep", dry_run=True)["points"][0]["action"] == "resume"
    stages = Calls(monkeypatch)
    sweep.run_sweep(cfg, grid, tmp_path / "sweep")
    assert stages.log == [("run_train", "lora-kall-seed0", True), ("run_eval", "lora-kall-seed0", False)]
    run = tmp_path / "sweep" / "movies" / "lora-kall-seed0"
    steps = [json.loads(x)["step"] for x in (run / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # 4 from before the stop, then 5 and 6 after the resume


def test_strategy_axis_trains_each_plan_of_each_k(tmp_path, base, monkeypatch):
    """--strategies scores,last,random --draws 2 at k=2: the guided plan, the top-heavy one and two random
    draws, each in its own folder with the plan recorded; k=all stays one point."""
    out = tmp_path / "sweep"
    grid = sweep.parse_grid(base, "lora", "all,2", "0", "movies", "scores,last,random", 2)
    assert grid.plans() == [("all", "scores", 0), (2, "scores", 0), (2, "last", 0), (2, "random", 0),
                            (2, "random", 1)]  # fmt: skip
    doc = sweep.run_sweep(base, grid, out)
    names = ["lora-kall-seed0", "lora-k2-seed0", "lora-k2-last-seed0", "lora-k2-random0-seed0",
             "lora-k2-random1-seed0"]  # fmt: skip
    assert [p["name"] for p in doc["points"]] == names
    plans = {n: json.loads((out / "movies" / n / "train_summary.json").read_text())["plan"] for n in names}
    assert plans["lora-k2-last-seed0"]["layers"] == [2, 3]  # the tiny BERT has 4 layers
    from actlora_cli.selection import by_strategy

    for draw in (0, 1):
        plan = plans[f"lora-k2-random{draw}-seed0"]
        assert plan["layers"] == by_strategy("random", 2, 4, seed=draw).layers and plan["seed"] == draw
    scores = json.loads((out / "movies" / "probe" / "scores.json").read_text())["scores"]
    assert plans["lora-k2-seed0"]["layers"] == sorted(sorted(range(4), key=lambda i: (-scores[i], i))[:2])
    assert {plans[n]["strategy"] for n in names} == {None, "scores", "last", "random"}


def test_unknown_strategy_and_bad_draws_are_refused_together(base):
    with pytest.raises(ConfigError) as info:
        sweep.parse_grid(base, "lora", "2", "0", "movies", "scores,lst", 0)
    assert [p.where for p in info.value.problems] == ["--strategies", "--draws"]
