"""Every study command end to end on a tiny model through the CLI: JSON (kind 'study'), Markdown, PNGs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from actlora_cli.cli import app
from actlora_cli.selection import k_for_tau
from tests.conftest import NUM_LAYERS, tiny_config

runner = CliRunner()


def _run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_models, tiny_task):
    root = tmp_path_factory.mktemp("studies")
    cfg = tiny_config(
        tiny_models["bert"],
        tiny_task,
        root / "run",
        probe={"steps": 2, "batch_size": 8},
        train={"epochs": 2, "lr": 2e-2},
    )
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return root, path


def _study(out, name):
    doc = json.loads((out / f"{name}.json").read_text())
    md = (out / f"{name}.md").read_text()
    assert doc["kind"] == "study" and md.strip()
    # every chart the study drew is linked from its Markdown, and inline in its page
    charts = sorted(p.name for p in out.glob(f"{name}*.png")) + (
        ["layer_scores.png"] if name == "thresholds" else []
    )
    linked = sorted(line[line.index("](") + 2 : -1] for line in md.splitlines() if line.startswith("!["))
    assert linked == sorted(charts) and charts
    assert (out / f"{name}.html").read_text().count('<img src="data:image/png;base64,') == len(charts)
    return doc


def test_stability_over_seeds(setup):
    root, cfg = setup
    out = root / "out"
    _run(
        "study",
        "stability",
        "-c",
        cfg,
        "--scorers",
        "activation_norm,grad_norm",
        "--seeds",
        3,
        "--ks",
        "1,2",
        "--out",
        out,
    )
    doc = _study(out, "stability")
    payload = doc["result"]
    for scorer in ("activation_norm", "grad_norm"):
        res = payload["results"][scorer]
        assert len(res["scores_by_seed"]) == 3 and len(res["scores_by_seed"][0]) == NUM_LAYERS
        assert res["kendall_tau"]["n"] == 3  # 3 seed pairs, all defined
        assert set(res["jaccard"]) == {"1", "2"}
        assert (out / f"stability_{scorer}.png").stat().st_size > 0
    # the scorers against each other: the seed-averaged scores, as the matrix's inputs
    agree = payload["scorer_agreement"]
    assert agree["tasks"] == ["activation_norm", "grad_norm"] and set(agree["plans"]) == {"1", "2"}
    mean0 = [sum(v) / 3 for v in zip(*payload["results"]["activation_norm"]["scores_by_seed"], strict=True)]
    assert agree["mean_scores"]["activation_norm"] == pytest.approx(mean0)


def test_a_study_run_again_reuses_its_probes(setup, monkeypatch):
    """An interrupted study resumes: probes already made from the same config are read back, not rerun; a
    changed setting probes again."""
    import actlora_cli.probe as probe

    root, cfg = setup
    out = root / "resume"
    args = ("study", "stability", "-c", cfg, "--scorers", "activation_norm", "--seeds", 2, "--ks", "1")
    _run(*args, "--out", out)
    first = _study(out, "stability")["result"]["results"]["activation_norm"]["scores_by_seed"]
    calls = []
    real = probe.run_probe
    monkeypatch.setattr(probe, "run_probe", lambda c: calls.append(c) or real(c))
    _run(*args, "--out", out)
    assert calls == []
    assert _study(out, "stability")["result"]["results"]["activation_norm"]["scores_by_seed"] == first
    _run(*args, "--out", out, "--set", "probe.steps=1")
    assert len(calls) == 2


def test_thresholds_and_plots(setup):
    root, cfg = setup
    out = root / "out_t"
    _run("probe", "-c", cfg)
    text = _run("study", "thresholds", "-c", cfg, "--out", out)
    doc = _study(out, "thresholds")
    table = doc["result"]["table"]
    scores = json.loads((root / "run" / "scores.json").read_text())["scores"]
    assert [row["tau"] for row in table] == [0.25, 0.5, 0.75, 1.0]
    assert [row["k"] for row in table] == [k_for_tau(scores, tau) for tau in (0.25, 0.5, 0.75, 1.0)]
    assert table[-1]["k"] == NUM_LAYERS - 1  # the min-max lowest layer scores 0 and adds nothing
    assert (out / "thresholds_curve.png").is_file() and (out / "layer_scores.png").is_file()
    assert "| 25% |" in text


def test_correlation_with_ablation(setup):
    root, cfg = setup
    out = root / "out_c"
    _run("train", "-c", cfg, "--k", "all")
    _run("ablate", "-c", cfg)
    _run(
        "study",
        "correlation",
        "-c",
        cfg,
        "--scorers",
        "activation_norm,cka,grad_norm,fisher,taylor,weight_delta",
        "--out",
        out,
    )
    doc = _study(out, "correlation")
    results = doc["result"]["results"]
    assert set(results) == {"q", "v", "both"}
    assert set(results["both"]) == {"activation_norm", "cka", "grad_norm", "fisher", "taylor", "weight_delta"}
    from scipy.stats import kendalltau, pearsonr, spearmanr

    ablation = json.loads((root / "run" / "ablation.json").read_text())["importance"]["both"]
    for scorer, scores in doc["result"]["scores"].items():
        values = results["both"][scorer]
        if values["spearman"] is not None:  # None only for a constant vector, with its reason
            assert values["spearman"] == pytest.approx(spearmanr(scores, ablation)[0], abs=1e-9)
            assert values["pearson"] == pytest.approx(pearsonr(scores, ablation)[0], abs=1e-9)
    assert (out / "correlation_heatmap.png").is_file()
    # per projection (Table 11's Q and V rows, Fig. 12): a projection-measuring scorer's own reading of that
    # projection against its ablation; a per-layer reading (activation norms, CKA) against each, as the paper
    importance = json.loads((root / "run" / "ablation.json").read_text())["importance"]
    by_target = doc["result"]["scores_by_target"]
    assert sorted(by_target) == ["fisher", "grad_norm", "taylor", "weight_delta"]
    for part in ("q", "v"):
        for scorer, values in results[part].items():
            per_projection = scorer in by_target
            vector = by_target[scorer][part] if per_projection else doc["result"]["scores"][scorer]
            how = doc["result"]["vectors"][part][scorer]
            assert how == ("per projection" if per_projection else "per layer")
            if values["kendall"] is not None:
                assert values["kendall"] == pytest.approx(kendalltau(vector, importance[part])[0], abs=1e-9)
                assert values["spearman"] == pytest.approx(spearmanr(vector, importance[part])[0], abs=1e-9)
                assert values["pearson"] == pytest.approx(pearsonr(vector, importance[part])[0], abs=1e-9)
            cosine = (
                np.dot(vector, importance[part]) / np.linalg.norm(vector) / np.linalg.norm(importance[part])
            )
            assert values["cosine"] == pytest.approx(cosine, abs=1e-9)
        assert (out / f"correlation_heatmap_{part}.png").stat().st_size > 0
    # the per-projection readings are the probe's, min-max scaled
    probe = json.loads((out / "scores" / "corr_grad_norm" / "scores.json").read_text())
    assert by_target["grad_norm"] == probe["scores_by_target"]
    for part in ("q", "v"):
        raw = np.array(probe["raw_by_target"][part])
        assert by_target["grad_norm"][part] == pytest.approx((raw - raw.min()) / (raw.max() - raw.min()))


@pytest.mark.slow
def test_task_agreement_on_packaged_domains(setup):
    root, cfg = setup
    out = root / "out_tasks"
    _run(
        "study",
        "tasks",
        "-c",
        cfg,
        "--tasks",
        "movies,tweets,nyt",
        "--out",
        out,
        "--set",
        "task.max_train_examples=64",
    )
    doc = _study(out, "tasks")
    matrix = doc["result"]["results"]["spearman"]
    assert set(matrix) == {"movies", "tweets", "nyt"}
    assert matrix["movies"]["movies"] == pytest.approx(1.0)
