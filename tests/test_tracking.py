"""train.report_to: each tracker's record, read back with the tool's own reader, equals the run's own log
(train_log.jsonl, train_summary.json); a missing package is a ConfigError naming the extra."""

from __future__ import annotations

import importlib.util
import json
import struct
import sys

import pytest
import yaml
from typer.testing import CliRunner

from actlora_cli import tracking, train
from actlora_cli.cli import app
from actlora_cli.config import Config
from actlora_cli.errors import ConfigError
from tests.conftest import poison_loss, tiny_config


def needs(package: str):
    return pytest.mark.skipif(
        importlib.util.find_spec(package) is None,
        reason=f"{package} is not installed (pip install 'actlora[{package}]')",
    )


def _cfg(tmp_path, tiny_models, tiny_task, **train_settings) -> Config:
    settings = {"epochs": 1, **train_settings}  # 96 examples / batch 8: 12 steps
    return Config.model_validate(
        tiny_config(tiny_models["bert"], tiny_task, tmp_path / "run", rank={"k": "all"}, train=settings)
    )


def _log(cfg: Config) -> dict[int, dict]:
    lines = (cfg.run_dir / "train_log.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines)}


def _evaluations(summary: dict) -> dict[int, float]:
    """validation loss at each evaluation's step, from the summary's history."""
    return {h["step"]: h["metrics"]["validation"]["loss"] for h in summary["history"]}


# --- the setting ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("none", []),
        ("tensorboard", ["tensorboard"]),
        ("tensorboard, mlflow", ["tensorboard", "mlflow"]),  # a --set value
        (["wandb", "wandb", "trackio"], ["wandb", "trackio"]),
        ([], []),
        (None, []),
    ],
)
def test_report_to_accepts_a_name_or_a_list(given, expected):
    assert Config.model_validate({"train": {"report_to": given}}).train.report_to == expected


@pytest.mark.parametrize(("given", "said"), [(["none", "wandb"], "none together with"), ("comet", "comet")])
def test_report_to_refuses_unknown_or_contradictory_values(given, said):
    with pytest.raises(ConfigError) as info:
        Config().with_overrides({"train.report_to": given})
    assert info.value.problems[0].where.startswith("train.report_to") and said in str(info.value)
    assert info.value.problems[0].fix  # the values that are known, or what to give instead


def test_reporting_elsewhere_does_not_stop_a_resume():
    cfg = Config()
    assert train.training_settings(cfg) == train.training_settings(
        cfg.with_overrides({"train.report_to": ["tensorboard"], "train.run_name": "x"})
    )


@pytest.mark.parametrize(
    ("report_to", "hidden", "missing"),
    [
        ("wandb", "wandb", "wandb"),
        ("mlflow", "alembic", "alembic"),
        ("tensorboard", "tensorboard", "tensorboard"),
    ],
)
def test_a_missing_package_exits_2_naming_the_extra_before_any_work(
    tmp_path, tiny_models, tiny_task, monkeypatch, report_to, hidden, missing
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default store needs SQLAlchemy + Alembic
    monkeypatch.setitem(sys.modules, hidden, None)  # importlib.util.find_spec then reports it absent
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tiny_models["bert"], tiny_task, tmp_path / "run")))
    result = CliRunner().invoke(
        app, ["train", "-c", str(path), "--k", "all", "--set", f"train.report_to={report_to}"]
    )
    assert result.exit_code == 2, result.output
    assert "train.report_to" in result.output
    listed = result.output.split(f"{report_to} needs ")[1].split(" (not installed)")[0]
    assert missing in listed.split(", ")  # with any other of its packages absent here
    assert f"pip install 'actlora[{report_to}]'" in result.output
    assert not (tmp_path / "run" / "train_log.jsonl").exists()  # refused before training


def test_only_rank_0_reports_but_every_rank_checks(tmp_path, monkeypatch):
    cfg = Config.model_validate({"train": {"report_to": ["wandb"]}, "output_dir": str(tmp_path / "r")})
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ConfigError):
        tracking.Tracking(cfg, is_main=False)  # every rank stops, not rank 0 alone
    monkeypatch.delitem(sys.modules, "wandb")
    if importlib.util.find_spec("wandb") is not None:
        assert tracking.Tracking(cfg, is_main=False).trackers == []
        assert [type(t) for t in tracking.Tracking(cfg, is_main=True).trackers] == [tracking.WandB]


# --- TensorBoard ------------------------------------------------------------------------------------------


def _scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}, events


@needs("tensorboard")
def test_tensorboard_events_equal_the_train_log_across_a_resume(
    tmp_path, tiny_models, tiny_task, monkeypatch
):
    """A NaN at step 7 stops the run after the checkpoint at step 4; the resumed run logs steps 5 to 12
    again. The event files hold every step once (the first attempt's 5 and 6 purged), each loss and lr equal
    to train_log.jsonl's, each evaluation's loss equal to the summary's history."""
    settings = {"logging_steps": 1, "eval_steps": 4, "report_to": "tensorboard"}
    cfg = _cfg(tmp_path, tiny_models, tiny_task, **settings)
    real = poison_loss(monkeypatch, at_call=7)
    with pytest.raises(train.NonFiniteLoss):
        train.run_train(cfg)
    monkeypatch.setattr(train, "compute_loss", real)
    summary = train.run_train(cfg, resume=True)
    log = _log(cfg)
    scalars, events = _scalars(cfg.run_dir / "tensorboard")
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, 13))
    for name in ("loss", "lr"):
        assert scalars[f"train/{name}"] == [(s, pytest.approx(log[s][name], rel=1e-6)) for s in range(1, 13)]
    assert dict(scalars["eval/validation/loss"]) == pytest.approx(_evaluations(summary), rel=1e-6)
    assert [s for s, _ in scalars["eval/validation/loss"]] == [4, 8, 12]
    assert scalars["summary/steps"] == [(12, 12.0)]
    assert scalars["summary/trainable_parameters"] == [(12, float(summary["trainable_parameters"]))]
    # the settings as a text table, once per start (the first attempt and the resume)
    texts = events.Tensors("config/text_summary")
    assert (
        len(texts) == 2 and "| plan.layers | [0, 1, 2, 3] |" in texts[-1].tensor_proto.string_val[0].decode()
    )


# --- MLflow -----------------------------------------------------------------------------------------------


@needs("mlflow")
def test_mlflow_store_in_the_run_folder_holds_params_and_metric_history(
    tmp_path, tiny_models, tiny_task, monkeypatch
):
    from mlflow import MlflowClient

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    cfg = _cfg(tmp_path, tiny_models, tiny_task, logging_steps=5, report_to=["mlflow"], run_name="guided-all")
    summary = train.run_train(cfg)
    log = _log(cfg)
    client = MlflowClient(f"sqlite:///{cfg.run_dir.resolve() / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("actlora").experiment_id])
    assert run.info.run_name == "guided-all" and run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.0002" and run.data.params["plan.layers"] == "[0, 1, 2, 3]"
    assert run.data.params["lora.targets"] == '["q", "v"]' and run.data.params["output_dir"] == str(
        cfg.run_dir
    )

    def history(key):
        return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]

    assert history("train/loss") == [(s, pytest.approx(log[s]["loss"], rel=1e-12)) for s in (5, 10, 12)]
    assert history("train/lr") == [(s, pytest.approx(log[s]["lr"], rel=1e-12)) for s in (5, 10, 12)]
    assert dict(history("eval/validation/loss")) == pytest.approx(_evaluations(summary), rel=1e-12)
    assert history("summary/samples_per_second") == [(12, summary["samples_per_second"])]


@needs("mlflow")
def test_mlflow_honours_its_tracking_uri_and_marks_a_failed_run(tmp_path, monkeypatch):
    """MLFLOW_TRACKING_URI (here a file: store in tmp_path) wins over the run folder's database; an exception
    inside the session ends the run as FAILED."""
    from mlflow import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses its file store without it
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "elsewhere")
    cfg = Config.model_validate({"train": {"report_to": "mlflow"}, "output_dir": str(tmp_path / "run")})
    tracker = tracking.Tracking(cfg, is_main=True)
    with pytest.raises(RuntimeError), tracker.session({"train.lr": 1e-4}, step=0):
        tracker.log({"train/loss": 0.5}, step=1)
        raise RuntimeError("stop")
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("elsewhere").experiment_id])
    assert (
        run.info.status == "FAILED" and run.info.run_name == "run" and run.data.params["train.lr"] == "0.0001"
    )
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss")] == [(1, 0.5)]
    assert not (tmp_path / "run" / "mlflow.db").exists()


# --- Weights & Biases, offline ----------------------------------------------------------------------------


def _wandb_records(path) -> list:
    """The records of an offline run's .wandb file: W&B's header (":W&B", magic, version), then LevelDB's log
    format (32 KiB blocks of records: crc32 uint32, length uint16, type uint8, data; types full, first,
    middle, last), each whole record a protobuf Record."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block, records, parts = path.read_bytes(), 32768, [], b""
    assert data[:4] == b":W&B"
    pos = 7
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a record header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zeroed space: the end of what was written
            break
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, or the last part
            record = Record()
            record.ParseFromString(parts)
            records.append(record)
            parts = b""
    return records


@needs("wandb")
def test_wandb_offline_run_holds_the_config_and_the_history(tmp_path, tiny_models, tiny_task, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    (tmp_path / "wb").mkdir()
    cfg = _cfg(
        tmp_path, tiny_models, tiny_task, logging_steps=2, max_steps=4, eval_steps=2, report_to="wandb"
    )
    summary = train.run_train(cfg)
    log = _log(cfg)
    (path,) = (tmp_path / "wb").glob("wandb/offline-run-*/run-*.wandb")
    records = _wandb_records(path)
    (run,) = [r.run for r in records if r.HasField("run")]
    assert run.project == "actlora" and run.display_name == "run"
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert config["train.lr"] == 0.0002 and config["plan.layers"] == [0, 1, 2, 3]
    rows: dict[int, dict] = {}
    for r in records:
        if r.HasField("history"):
            items = {
                i.nested_key[0] if i.nested_key else i.key: json.loads(i.value_json) for i in r.history.item
            }
            rows.setdefault(r.history.step.num, {}).update(items)
    assert [rows[s]["train/loss"] for s in (2, 4)] == [log[2]["loss"], log[4]["loss"]]
    assert {s: rows[s]["eval/validation/loss"] for s in (2, 4)} == _evaluations(summary)
    assert rows[4]["summary/steps"] == 4


# --- Trackio, local -------------------------------------------------------------------------------------


@needs("trackio")
def test_trackio_local_store_holds_the_history(tmp_path, tiny_models, tiny_task, monkeypatch):
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    for name in [m for m in sys.modules if m == "trackio" or m.startswith("trackio.")]:
        monkeypatch.delitem(sys.modules, name)  # trackio reads TRACKIO_DIR when imported
    cfg = _cfg(
        tmp_path, tiny_models, tiny_task, logging_steps=2, max_steps=4, eval_steps=2, report_to="trackio"
    )
    summary = train.run_train(cfg)
    log = _log(cfg)
    from trackio.sqlite_storage import SQLiteStorage

    rows: dict[int, dict] = {}
    for row in SQLiteStorage.get_logs("actlora", "run"):  # one row per log call: the train and eval rows
        rows.setdefault(row["step"], {}).update(row)
    assert [rows[s]["train/loss"] for s in (2, 4)] == [log[2]["loss"], log[4]["loss"]]
    assert {s: rows[s]["eval/validation/loss"] for s in (2, 4)} == _evaluations(summary)
    assert rows[4]["summary/steps"] == 4
