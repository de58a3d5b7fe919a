"""compare: runs that differ only by seed are grouped by their resolved configs, every column is a mean ± std
(ddof=0) over the group's seeds, changes are taken against the baseline group's mean; the report, its
Markdown and two PNG charts are written; bad folders fail with exit code 2 and the folder named. The cost
account: the probe charged in full and amortised over the plans made from it, the other costs apart, warnings
on uneven host load and older summaries. The run folders are fakes written with the artefact writers, so
nothing here trains a model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from actlora_cli import artifacts
from actlora_cli.cli import app
from actlora_cli.compare import compare_runs, markdown, write_report
from actlora_cli.config import Config
from actlora_cli.errors import ArtifactError

NUM_LAYERS = 6
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OTHER_COSTS = {"eval_seconds": 5.0, "checkpoint_seconds": 2.0, "load_seconds": 3.0, "data_seconds": 1.0}


def make_scores(path: Path, *, probe_s: float = 36.0, load_s: float = 5.0, world_size: int = 2) -> Path:
    """A scores.json as `actlora probe` writes it, with its timings."""
    artifacts.write_artifact(
        path,
        "scores",
        {
            "scorer": "activation_norm",
            "model": {"name": "m", "model_type": "bert", "num_layers": NUM_LAYERS, "hidden_size": 384},
            "scores": [0.1, 0.9, 0.3, 1.0, 0.0, 0.6],
            "world_size": world_size,
            "timings": {
                "load_s": load_s,
                "probe_s": probe_s,
                "per_batch_ms": 1000 * probe_s / 8,
                "total_s": load_s + probe_s + 1.0,
            },
        },
    )
    return path


def make_run(
    folder: Path,
    *,
    seed: int,
    metric: float,
    k: int | str = "all",
    layers: list[int] | None = None,
    method: str | None = "lora",
    task: str = "movies",
    params: int = 73_728,
    device_hours: float = 0.012,
    phases: tuple[float, float, float] = (20.0, 18.0, 2.0),
    latency: float = 4.0,
    throughput: float = 200.0,
    peak: float | None = 1000.0,
    strategy: str | None = "scores",
    scores: Path | None = None,
    others_share: float | None = 0.02,
    legacy: bool = False,
) -> Path:
    """A run folder as train and eval leave it: train_summary.json, eval.json and config.resolved.yaml; with
    ``scores``, a copy of that scores.json and a selection.json naming its hash, as rank leaves them.
    ``method=None`` writes a summary from before lora.method existed, ``legacy`` one from before its cost
    account (no cost, no host). A plan of every layer is k=all (rule all, no strategy)."""
    cfg = Config.model_validate(
        {
            "task": {"name": task},
            "rank": {"k": k},
            "lora": {"method": method or "lora"},
            "train": {"seed": seed},
            "output_dir": str(folder),
        }
    )
    lora = cfg.lora.model_dump()
    if method is None:
        del lora["method"]
    layers = list(range(NUM_LAYERS)) if layers is None else layers
    every = layers == list(range(NUM_LAYERS))
    forward, backward, optimizer = phases
    if scores is not None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "scores.json").write_bytes(scores.read_bytes())
        selection = {"layers": layers, "scores_hash": artifacts.file_hash(folder / "scores.json")}
        (folder / "selection.json").write_text(json.dumps({"kind": "selection", **selection}))
    account = {
        "cost": {"step_seconds": device_hours * 3600, **OTHER_COSTS, "loop_seconds": device_hours * 3600 + 9},
        "host": {
            "cpu_count": 16,
            "others_cpu_share": others_share,
            "load_average_start": 0.5,
            "load_average_end": 0.7,
        },
    }
    artifacts.write_artifact(
        folder / "train_summary.json",
        "train_summary",
        {
            "model": {
                "name": cfg.model.name,
                "model_type": "bert",
                "num_layers": NUM_LAYERS,
                "hidden_size": 384,
            },
            "task": {"name": task, "train_examples": 4000},
            "plan": {
                "layers": layers,
                "k": len(layers),
                "tau": None,
                "rule": "all" if every else "top_k",
                "strategy": None if every else strategy,
                "seed": None,
                "source": "selection.json",
                "ranks_agreeing": 1,
            },
            "lora": lora,
            "trainable_parameters": params,
            "total_parameters": 22_713_216 + params,
            "steps": 125,
            "final_metrics": {"validation": {"accuracy": metric}},
            "mean_step_ms": {"forward": forward, "backward": backward, "optimizer": optimizer},
            "train_seconds": device_hours * 3600,
            "device": "cuda:0" if peak is not None else "cpu",
            "world_size": 1,
            "device_hours": device_hours,
            "peak_memory_mib": peak,
            "precision": "bf16",
            **({} if legacy else account),
        },
    )
    timing = {
        "latency_ms_p50": latency,
        "latency_ms_p90": latency * 1.2,
        "latency_ms_mean": latency,
        "throughput_samples_per_s": throughput,
        "batches_timed": 14,
    }
    artifacts.write_artifact(
        folder / "eval.json",
        "eval",
        {
            "model": {
                "name": cfg.model.name,
                "model_type": "bert",
                "num_layers": NUM_LAYERS,
                "hidden_size": 384,
            },
            "task": {"name": task, "splits": {"validation": 1000}},
            "metrics": {"validation": {"accuracy": metric, "f1": metric - 0.01}},
            "timing": {
                "unmerged": timing,
                "merged": {**timing, "latency_ms_mean": latency * 0.9},
                "merged_metrics_match": True,
            },
            "batch_size": 64,
        },
    )
    artifacts.write_resolved(cfg)
    return folder


# Baseline: LoRA on every layer, three seeds; Act-LoRA k=3, three seeds; IA3, one seed.
BASE = {"metric": [0.80, 0.82, 0.84], "device_hours": [0.010, 0.012, 0.014]}
ACT = {"metric": [0.80, 0.81, 0.79], "throughput": [240.0, 250.0, 260.0]}


@pytest.fixture
def runs(tmp_path) -> dict[str, list[Path]]:
    probe = make_scores(tmp_path / "probe" / "scores.json")
    base = [
        make_run(tmp_path / f"lora-all-s{s}", seed=s, metric=m, device_hours=h)
        for s, m, h in zip(range(3), BASE["metric"], BASE["device_hours"], strict=True)
    ]
    act = [
        make_run(
            tmp_path / f"act-k3-s{s}",
            seed=s,
            metric=m,
            throughput=t,
            k=3,
            layers=[1, 3, 5],
            params=36_864,
            device_hours=0.009,
            phases=(16.0, 12.5, 1.5),
            latency=3.0,
            peak=900.0,
            scores=probe,
        )
        for s, m, t in zip(range(3), ACT["metric"], ACT["throughput"], strict=True)
    ]
    ia3 = [
        make_run(
            tmp_path / "ia3-s0",
            seed=0,
            metric=0.78,
            method="ia3",
            params=9_216,
            device_hours=0.011,
            phases=(19.0, 15.0, 1.0),
            latency=3.9,
            throughput=205.0,
            peak=950.0,
        )
    ]
    return {"base": base, "act": act, "ia3": ia3}


def by_label(report: dict) -> dict[str, dict]:
    return {g["label"]: g for g in report["groups"]}


def test_runs_differing_only_by_seed_are_grouped_and_the_baseline_folder_is_counted_once(runs):
    report = compare_runs(
        [*runs["act"], runs["base"][2], *runs["ia3"], runs["base"][1], runs["base"][0]], runs["base"][0]
    )
    groups = report["groups"]
    assert [g["label"] for g in groups] == ["lora [all]", "lora [1,3,5]", "ia3 [all]"]
    assert [g["n"] for g in groups] == [3, 3, 1]
    assert groups[0]["is_baseline"] and not any(g["is_baseline"] for g in groups[1:])
    assert report["baseline_group"] == "lora [all]"
    assert sorted(groups[0]["runs"]) == sorted(map(str, runs["base"]))
    assert sorted(groups[0]["seeds"]) == [0, 1, 2]
    assert groups[1]["runs"] == list(map(str, runs["act"]))
    assert len(report["rows"]) == 7
    assert report["rows"][0]["run"] == str(runs["base"][0])  # the baseline comes first
    assert "ddof=0" in report["std"]


def test_means_and_population_stds_match_numpy(runs):
    report = compare_runs(runs["act"] + runs["ia3"] + runs["base"][1:], runs["base"][0])
    groups = by_label(report)
    base, act, ia3 = (groups[label]["values"] for label in ("lora [all]", "lora [1,3,5]", "ia3 [all]"))
    for name, values in (("metric", BASE["metric"]), ("device_hours", BASE["device_hours"])):
        assert base[name]["mean"] == pytest.approx(np.mean(values), abs=1e-12)
        assert base[name]["std"] == pytest.approx(np.std(values, ddof=0), abs=1e-12)
    for name, values in (("metric", ACT["metric"]), ("throughput", ACT["throughput"])):
        assert act[name]["mean"] == pytest.approx(np.mean(values), abs=1e-12)
        assert act[name]["std"] == pytest.approx(np.std(values, ddof=0), abs=1e-12)
    assert act["step_ms"] == {"mean": pytest.approx(30.0), "std": pytest.approx(0.0)}
    assert act["backward_ms"] == {"mean": pytest.approx(12.5), "std": pytest.approx(0.0)}
    assert ia3["metric"] == {"mean": pytest.approx(0.78), "std": 0.0}  # a group of one


def test_change_columns_compare_with_the_baseline_group_mean(runs):
    report = compare_runs(runs["act"] + runs["ia3"] + runs["base"][1:], runs["base"][0])
    groups = by_label(report)
    act = groups["lora [1,3,5]"]["changes"]
    base_metric = 0.82  # mean of 0.80, 0.82, 0.84
    expected = {  # hand values: (mean, std)
        "metric_change_pct": (100 * (0.80 - 0.82) / 0.82, 100 * np.std(ACT["metric"]) / base_metric),
        "parameters_saved_pct": (50.0, 0.0),  # 36,864 of 73,728
        "device_hours_saved_pct": (25.0, 0.0),  # 0.009 against a mean of 0.012
        "step_time_ratio": (0.75, 0.0),  # 30 ms against 40 ms
        "latency_reduction_pct": (25.0, 0.0),  # 3 ms against 4 ms
        "throughput_gain_pct": (25.0, 100 * np.std(ACT["throughput"]) / 200.0),  # mean 250 against 200
        "peak_memory_reduction_pct": (10.0, 0.0),  # 900 MiB against 1000 MiB
    }
    for key, (mean, std) in expected.items():
        assert act[key]["mean"] == pytest.approx(mean, abs=1e-9), key
        assert act[key]["std"] == pytest.approx(std, abs=1e-9), key
    base = groups["lora [all]"]["changes"]
    assert base["metric_change_pct"]["mean"] == pytest.approx(0.0, abs=1e-9)
    assert base["metric_change_pct"]["std"] == pytest.approx(100 * np.std(BASE["metric"]) / base_metric)
    assert base["device_hours_saved_pct"]["std"] == pytest.approx(100 * np.std(BASE["device_hours"]) / 0.012)
    assert groups["ia3 [all]"]["changes"]["parameters_saved_pct"] == {"mean": pytest.approx(87.5), "std": 0.0}
    # the per-run rows carry each run's own change against the same baseline mean
    rows = {r["run"]: r for r in report["rows"]}
    assert rows[str(runs["act"][2])]["metric_change_pct"] == pytest.approx(100 * (0.79 - 0.82) / 0.82)


def test_cpu_runs_without_peak_memory_report_it_as_not_available(tmp_path):
    base = make_run(tmp_path / "base", seed=0, metric=0.8, peak=None)
    run = make_run(tmp_path / "run", seed=0, metric=0.7, k=2, layers=[4, 5], peak=None, strategy="last")
    report = compare_runs([run], base)
    assert report["groups"][1]["changes"]["peak_memory_reduction_pct"] == {"mean": None, "std": None}
    assert "n/a" in markdown(report).splitlines()[4]


def test_labels_show_what_else_differs_and_old_summaries_are_lora(tmp_path):
    base = make_run(tmp_path / "movies", seed=0, metric=0.8, method=None)
    other_task = make_run(tmp_path / "sst2", seed=0, metric=0.9, task="sst2")
    report = compare_runs([other_task], base)
    labels = [g["label"] for g in report["groups"]]
    assert labels == ["lora [all] task.name=movies", "lora [all] task.name=sst2"]
    assert report["groups"][1]["differs"] == {"task.name": "sst2"}
    assert report["groups"][0]["method"] == "lora"


def test_markdown_states_mean_std_ddof_and_n(runs):
    text = markdown(compare_runs(runs["act"] + runs["base"][1:], runs["base"][0]))
    lines = text.splitlines()
    assert "ddof=0" in lines[0] and "Baseline: lora [all] (n=3)" in lines[0]
    assert lines[2].startswith("| group | n | metric | value | change % |")
    act = next(line for line in lines if line.startswith("| lora [1,3,5] | 3 |"))
    assert f"{np.mean(ACT['metric']):.4f} ± {np.std(ACT['metric']):.4f}" in act
    assert "| 50.0 ± 0.0 |" in act and "| 0.750 ± 0.000 |" in act
    assert sum(line.startswith("| ") and "act-k3-s" in line for line in lines) == 3  # the runs table
    # a single run shows no spread it never measured
    single = markdown(compare_runs(runs["act"][:1], runs["base"][0]))
    row = next(line for line in single.splitlines() if line.startswith("| lora [1,3,5] | 1 |"))
    assert "±" not in row and f"| {ACT['metric'][0]:.4f} |" in row


def test_write_report_writes_json_markdown_and_valid_pngs(runs, tmp_path):
    report = compare_runs(runs["act"] + runs["ia3"] + runs["base"][1:], runs["base"][0])
    out = tmp_path / "report" / "comparison.json"
    written = write_report(report, out)
    charts = [out.with_name("comparison_metric_vs_params.png"), out.with_name("comparison_step_time.png")]
    assert written == [out, out.with_suffix(".md"), out.with_suffix(".html"), *charts]
    for png in written[3:]:
        data = png.read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC)
    assert artifacts.read_artifact(out, "comparison")["groups"] == json.loads(json.dumps(report["groups"]))
    # the Markdown, then the charts beside it; the page shows both (tests/test_html_report.py checks pages)
    assert out.with_suffix(".md").read_text() == markdown(report) + (
        "\n![metric against trainable parameters](comparison_metric_vs_params.png)\n"
        "\n![step time by phase](comparison_step_time.png)\n"
    )
    page = out.with_suffix(".html").read_text()
    assert page.count('<img src="data:image/png;base64,') == 2 and "<table>" in page
    assert not list((tmp_path / "report").glob(".*"))  # no temporary files left behind


def test_bad_folders_are_all_named_in_one_error(runs):
    (runs["act"][0] / "eval.json").unlink()
    (runs["act"][1] / "config.resolved.yaml").write_text("model: [unclosed\n")
    (runs["ia3"][0] / "config.resolved.yaml").unlink()
    with pytest.raises(ArtifactError) as caught:
        compare_runs(runs["act"] + runs["ia3"], runs["base"][0])
    where = [p.where for p in caught.value.problems]
    assert where == [
        str(runs["act"][0] / "eval.json"),
        str(runs["act"][1] / "config.resolved.yaml"),
        str(runs["ia3"][0] / "config.resolved.yaml"),
    ]


def test_cli_prints_markdown_and_writes_the_files(runs, tmp_path):
    out = tmp_path / "cmp.json"
    args = ["compare", *map(str, runs["act"]), "--baseline", str(runs["base"][0]), "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Baseline: lora [all] (n=1).")
    assert "| lora [1,3,5] | 3 |" in result.stdout
    assert (tmp_path / "cmp_step_time.png").read_bytes().startswith(PNG_MAGIC)
    assert json.loads(out.read_text())["kind"] == "comparison"


def test_cli_missing_eval_exits_2_naming_the_folder_and_writes_nothing(runs, tmp_path):
    (runs["act"][1] / "eval.json").unlink()
    out = tmp_path / "out" / "cmp.json"
    args = ["compare", *map(str, runs["act"]), "--baseline", str(runs["base"][0]), "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    shown = result.output.replace("\n", "")  # the console folds long paths at its width
    assert f"{runs['act'][1] / 'eval.json'}: no eval file" in shown
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_cli_refuses_an_out_file_that_is_not_json(runs, tmp_path):
    out = tmp_path / "r.md"  # the JSON would be overwritten by its own Markdown
    args = ["compare", str(runs["act"][0]), "-b", str(runs["base"][0]), "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "must end in .json" in " ".join(result.output.split())
    assert list(tmp_path.glob("r*")) == []


# The cost account, by hand: LoRA on every layer (0.010 device-h, no probe); two plans made from one probe
# (36 s of scoring on 2 ranks: 72 device-seconds = 0.02 device-h; 0.01 each, amortised over the two);
# a plan by position beside a copy of the same scores.json, which used no probe.
PROBE_HOURS = 72 / 3600


@pytest.fixture
def probed(tmp_path) -> dict[str, Path]:
    probe = make_scores(tmp_path / "probe" / "scores.json", probe_s=36.0, load_s=5.0, world_size=2)
    return {
        "base": make_run(tmp_path / "all", seed=0, metric=0.80, device_hours=0.010),
        "top3": make_run(
            tmp_path / "k3", seed=0, metric=0.79, k=3, layers=[1, 3, 5], device_hours=0.005, scores=probe
        ),
        "inverse2": make_run(
            tmp_path / "inverse-k2",
            seed=0,
            metric=0.75,
            k=2,
            layers=[0, 4],
            device_hours=0.004,
            scores=probe,
            strategy="inverse",
        ),
        "last3": make_run(
            tmp_path / "last-k3",
            seed=0,
            metric=0.77,
            k=3,
            layers=[3, 4, 5],
            device_hours=0.005,
            scores=probe,
            strategy="last",
        ),
    }


def test_the_probe_is_charged_in_full_and_amortised_over_the_plans_made_from_it(probed):
    report = compare_runs([probed["top3"], probed["inverse2"], probed["last3"]], probed["base"])
    rows = {Path(r["run"]).name: r for r in report["rows"]}
    # the scoring pass x world size; the probe's model load is reported apart
    assert rows["k3"]["probe_seconds"] == rows["inverse-k2"]["probe_seconds"] == pytest.approx(72.0)
    assert rows["k3"]["probe_load_seconds"] == pytest.approx(10.0)
    assert rows["k3"]["probe_shared_by"] == rows["inverse-k2"]["probe_shared_by"] == 2
    # k=all and a plan by position are charged nothing, though the latter's folder holds the scores
    for name in ("all", "last-k3"):
        assert rows[name]["probe_seconds"] == 0.0 and rows[name]["probe_shared_by"] is None
        assert rows[name]["device_hours_with_probe"] == rows[name]["device_hours_amortised"]
    assert rows["k3"]["device_hours_with_probe"] == pytest.approx(0.005 + PROBE_HOURS)  # 0.025
    assert rows["k3"]["device_hours_amortised"] == pytest.approx(0.005 + PROBE_HOURS / 2)  # 0.015
    assert rows["inverse-k2"]["device_hours_amortised"] == pytest.approx(0.004 + PROBE_HOURS / 2)  # 0.014
    [probe] = report["probes"]
    assert probe["shared_by"] == 2 and probe["seconds"] == 72.0 and probe["seconds_per_run"] == 36.0
    assert sorted(map(Path, probe["runs"])) == sorted([probed["top3"], probed["inverse2"]])

    groups = by_label(report)
    hand = {  # (device-h saved, incl. probe, amortised) %, against the baseline's 0.010 device-h
        "lora [1,3,5]": (50.0, -150.0, -50.0),
        "lora [0,4]": (60.0, -140.0, -40.0),
        "lora [3,4,5]": (50.0, 50.0, 50.0),
        "lora [all]": (0.0, 0.0, 0.0),
    }
    keys = ("device_hours_saved_pct", "device_hours_saved_with_probe_pct", "device_hours_saved_amortised_pct")
    for label, expected in hand.items():
        changes = groups[label]["changes"]
        assert tuple(changes[k]["mean"] for k in keys) == pytest.approx(expected, abs=1e-9), label
    assert groups["lora [1,3,5]"]["values"]["probe_seconds"]["mean"] == pytest.approx(72.0)

    text = markdown(report)
    lines = text.splitlines()
    assert (
        "| device-h | probe s | device-h saved % | saved incl. probe % | saved incl. probe (amortised) % |"
        in (lines[2])
    )
    top3 = next(line for line in lines if line.startswith("| lora [1,3,5] | 1 |"))
    assert "| 0.005 | 72.0 | 50.0 | -150.0 | -50.0 |" in top3
    base = next(line for line in lines if line.startswith("| lora [all] | 1 |"))
    assert "| 0.01 | 0.0 | 0.0 | 0.0 | 0.0 |" in base
    run = next(line for line in lines if line.startswith(f"| {probed['inverse2']} |"))
    assert run.endswith("| 0.004 | 72.0 | 0.024 | 0.014 | 0.02 |")
    assert "Definitions:" in lines and any(
        line.startswith("- probe s: the probe's scoring pass") for line in lines
    )
    assert report["definitions"]["device_hours_amortised"].endswith("(the same scores.json content hash)")
    assert report["warnings"] == [] and "Warning" not in text  # equal loads, every summary has its cost


def test_a_probe_of_other_content_is_shared_by_no_one_and_a_missing_one_is_not_charged(probed, tmp_path):
    other = make_scores(tmp_path / "other" / "scores.json", probe_s=18.0, world_size=1)
    alone = make_run(
        tmp_path / "k2", seed=0, metric=0.7, k=2, layers=[1, 3], device_hours=0.005, scores=other
    )
    (probed["inverse2"] / "scores.json").unlink()
    report = compare_runs([probed["top3"], probed["inverse2"], alone], probed["base"])
    rows = {Path(r["run"]).name: r for r in report["rows"]}
    assert rows["k2"]["probe_shared_by"] == 1
    assert rows["k2"]["device_hours_amortised"] == pytest.approx(0.005 + 18 / 3600)
    assert rows["k3"]["probe_shared_by"] == 1  # its partner's copy is gone
    assert rows["k3"]["device_hours_amortised"] == pytest.approx(0.005 + PROBE_HOURS)
    missing = rows["inverse-k2"]
    assert missing["probe_seconds"] is None and missing["device_hours_with_probe"] is None
    changes = by_label(report)["lora [0,4]"]["changes"]
    assert changes["device_hours_saved_with_probe_pct"] == {"mean": None, "std": None}
    assert changes["device_hours_saved_pct"]["mean"] == pytest.approx(60.0)  # the rest stands
    [warning] = report["warnings"]
    assert str(probed["inverse2"]) in warning and "no scores.json" in warning and "not charged" in warning


def test_other_costs_are_apart_from_device_hours(probed):
    report = compare_runs([probed["top3"]], probed["base"])
    values = by_label(report)["lora [1,3,5]"]["values"]
    for key, seconds in OTHER_COSTS.items():
        assert values[key] == {"mean": pytest.approx(seconds), "std": 0.0}
    assert values["device_hours"]["mean"] == pytest.approx(0.005)  # the timed phases alone
    assert report["rows"][1]["device_hours_definition"] == "phases"
    assert "other s (eval / ckpt / load / data) |" in markdown(report).splitlines()[2]
    assert markdown(report).splitlines()[5].endswith("| 5.0 / 2.0 / 3.0 / 1.0 |")


@pytest.mark.parametrize(
    ("shares", "expected"),
    [
        ((0.02, 0.10), []),  # close, and both light
        ((0.02, 0.20), ["different host load"]),  # a gap of 0.18
        ((0.28, 0.30), ["busy host"]),  # close, but both heavy
        ((0.02, 0.40), ["different host load", "busy host"]),
    ],
)
def test_runs_timed_under_different_host_load_are_warned_on(tmp_path, shares, expected):
    base = make_run(tmp_path / "base", seed=0, metric=0.8, others_share=shares[0])
    run = make_run(
        tmp_path / "run", seed=0, metric=0.7, k=2, layers=[4, 5], strategy="last", others_share=shares[1]
    )
    report = compare_runs([run], base)
    warnings = report["warnings"]
    assert [next(kind for kind in expected if kind in w) for w in warnings] == expected
    for warning in warnings:
        if "different host load" in warning:
            assert f"{shares[1]:.2f} of the CPU while {run} trained" in warning
            assert f"{shares[0]:.2f} while {base} did" in warning
        else:
            assert f"{run} ({shares[1]:.2f})" in warning
            assert (str(base) in warning) == (shares[0] > 0.25)
    shown = [line for line in markdown(report).splitlines() if line.startswith("- **Warning:** ")]
    assert len(shown) == len(expected)


def test_older_summaries_are_warned_on_as_another_definition(tmp_path):
    base = make_run(tmp_path / "base", seed=0, metric=0.8)
    old = make_run(tmp_path / "old", seed=0, metric=0.7, k=2, layers=[4, 5], strategy="last", legacy=True)
    report = compare_runs([old], base)
    [warning] = report["warnings"]
    assert "1 of 2 runs" in warning and "older definition" in warning and warning.endswith(str(old))
    row = report["rows"][1]
    assert row["device_hours_definition"] == "loop" and row["eval_seconds"] is None
    assert row["others_cpu_share"] is None  # no host either: no load warning for it
    assert markdown(report).splitlines()[5].endswith("| n/a / n/a / n/a / n/a |")
    everything_old = compare_runs([old], make_run(tmp_path / "b2", seed=1, metric=0.8, legacy=True))
    assert [w.startswith("every summary is of the older definition") for w in everything_old["warnings"]] == [
        True
    ]


def test_the_json_report_carries_warnings_definitions_and_probes(probed, tmp_path):
    (probed["top3"] / "train_summary.json").write_text(
        (probed["top3"] / "train_summary.json")
        .read_text()
        .replace('"others_cpu_share": 0.02', '"others_cpu_share": 0.5')
    )
    report = compare_runs([probed["top3"], probed["inverse2"]], probed["base"])
    out = tmp_path / "report" / "comparison.json"
    write_report(report, out)
    doc = artifacts.read_artifact(out, "comparison")
    assert doc["warnings"] == report["warnings"] and len(doc["warnings"]) == 2
    assert doc["definitions"] == report["definitions"]
    assert doc["probes"][0]["shared_by"] == 2
    assert "- **Warning:** busy host" in out.with_suffix(".md").read_text()


def test_glue_average_over_two_tasks_by_hand(tmp_path, runs):
    # one task: no GLUE average
    assert compare_runs(runs["act"], runs["base"][0])["glue_average"] is None
    # eval.json holds accuracy m and F1 m - 0.01: the task's score is m - 0.005
    base = [make_run(tmp_path / f"m-all-{s}", seed=s, metric=m) for s, m in ((0, 0.80), (1, 0.82))]
    tweets = make_run(tmp_path / "t-all-0", seed=0, metric=0.70, task="tweets")
    k3 = make_run(tmp_path / "m-k3-0", seed=0, metric=0.78, k=3, layers=[3, 4, 5], params=36_864)
    report = compare_runs([base[1], tweets, k3], base[0])
    rows = {row["setting"].split("k=")[1].split(",")[0]: row for row in report["glue_average"]}
    every = rows["all"]
    assert every["tasks"] == pytest.approx({"movies": (0.795 + 0.815) / 2, "tweets": 0.695})
    assert every["average"] == pytest.approx(((0.795 + 0.815) / 2 + 0.695) / 2) and every["complete"]
    assert rows["3"]["tasks"] == pytest.approx({"movies": 0.775}) and not rows["3"]["complete"]
    assert "GLUE average" in markdown(report) and "(not every task)" in markdown(report)
