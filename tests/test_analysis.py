"""Analysis studies on per-layer score vectors: hand-worked values, scipy as the oracle for the
correlations, undefined measures as None (valid JSON), readable PNG figures, and the 'study' artefact."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from matplotlib import image as mpimg
from scipy import stats

from actlora_cli.analysis import (
    agreement,
    correlate_with_reference,
    correlation,
    markdown_table,
    plots,
    seed_stability,
    stability,
    task_agreement,
    threshold_table,
    thresholds,
    write_study,
)
from actlora_cli.analysis.report import format_value
from actlora_cli.artifacts import SCHEMA_VERSION, read_artifact
from actlora_cli.errors import ActloraError
from actlora_cli.selection import cumulative_importance, k_for_tau

DESC = [4.0, 3.0, 2.0, 1.0]
ONE_SWAP = [4.0, 3.0, 1.0, 2.0]  # 1 discordant pair of 6: tau = (5 - 1) / 6


def _no_nan_json(text: str):
    def refuse(constant):
        raise AssertionError(f"{constant} in JSON")

    return json.loads(text, parse_constant=refuse)


# ---- seed stability (Tables 9, 10) ----


def test_kendall_one_swap_is_two_thirds_and_pairs_are_all_seed_pairs():
    result = seed_stability([DESC, DESC, ONE_SWAP], ks=[2])
    assert result["n_pairs"] == 3 and result["pairs"] == [[0, 1], [0, 2], [1, 2]]
    assert result["kendall_tau"]["values"] == pytest.approx([1.0, 2 / 3, 2 / 3], abs=1e-12)
    # mean 7/9; population std sqrt(((2/9)^2 + 2 (1/9)^2) / 3) = sqrt(2) / 9
    assert result["kendall_tau"]["mean"] == pytest.approx(7 / 9, abs=1e-12)
    assert result["kendall_tau"]["std"] == pytest.approx(math.sqrt(2) / 9, abs=1e-12)
    assert result["jaccard"]["2"]["values"] == [1.0, 1.0, 1.0]  # top-2 is {0, 1} in all three


def test_identical_seeds_are_perfectly_stable():
    result = seed_stability([[0.1, 0.9, 0.4, 0.7]] * 4, ks=[1, 2, 3, 4])
    tau = result["kendall_tau"]
    assert (tau["mean"], tau["std"], tau["n"], tau["n_undefined"]) == (1.0, 0.0, 6, 0)
    summary = {k: (r["mean"], r["std"]) for k, r in result["jaccard"].items()}
    assert summary == dict.fromkeys("1234", (1.0, 0.0))
    assert result["per_layer"]["mean"] == pytest.approx([0.1, 0.9, 0.4, 0.7], abs=1e-15)
    assert result["per_layer"]["std"] == [0.0] * 4


def test_top_k_sets_break_ties_like_ranking():
    # a ranks [0, 1, 2, 3] (0 and 1 tie: lower index first); b ranks [1, 2, 0, 3] (1 and 2 tie)
    a, b = [1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]
    result = seed_stability([a, b], ks=[1, 2, 3])
    means = [r["mean"] for r in result["jaccard"].values()]
    assert means == pytest.approx([0.0, 1 / 3, 1.0])  # {0} v {1}, {0, 1} v {1, 2}, {0, 1, 2} v {1, 2, 0}
    assert result["kendall_tau"]["mean"] == pytest.approx(stats.kendalltau(a, b).statistic, abs=1e-12)
    assert stability.jaccard({0, 1}, {1, 2}) == pytest.approx(1 / 3)


def test_population_std_reproduces_paper_table_10():
    # 10 seeds in two groups of 5 whose top-4 sets differ by one layer: 20 pairs J = 1, 25 pairs J = 3/5.
    a = [0.9, 0.8, 0.7, 0.6, 0.5, 0.1]
    b = [0.9, 0.8, 0.7, 0.5, 0.6, 0.1]
    jac = seed_stability([a] * 5 + [b] * 5, ks=[4])["jaccard"]["4"]
    assert jac["n"] == 45
    assert jac["mean"] == pytest.approx(7 / 9, abs=1e-12)
    assert jac["std"] == pytest.approx(4 * math.sqrt(5) / 45, abs=1e-12)  # 0.1988, the paper's value
    assert (round(jac["mean"], 4), round(jac["std"], 4)) == (0.7778, 0.1988)


def test_constant_seed_gives_undefined_tau_not_nan():
    result = seed_stability([[1.0] * 4, [1.0] * 4, DESC], ks=[2])
    tau = result["kendall_tau"]
    assert tau["values"] == [None, None, None] and tau["mean"] is None and tau["n_undefined"] == 3
    assert tau["undefined"] == [
        "seed 0 and seed 1 are constant across layers",
        "seed 0 is constant across layers",
        "seed 1 is constant across layers",
    ]
    assert result["jaccard"]["2"]["mean"] == 1.0  # ties go to layers 0, 1: the same top-2 as DESC
    _no_nan_json(json.dumps(result))
    assert "n/a" in stability.markdown(result)


@pytest.mark.parametrize(
    "scores, ks, where",
    [
        ([DESC], [1], "scores_by_seed"),
        ([DESC, DESC], [0, 5], "ks"),
        ([DESC, [1.0, 2.0]], [1], "seed 1"),
        ([DESC, [1.0, float("nan"), 2.0, 3.0]], [1], "seed 1"),
        ([DESC, [1.0, None, 2.0, 3.0]], [1], "seed 1"),
    ],
)
def test_seed_stability_errors_name_the_input(scores, ks, where):
    with pytest.raises(ActloraError) as info:
        seed_stability(scores, ks)
    assert [p.where for p in info.value.problems] == [where]


# ---- task agreement (section 7.4) ----


def test_task_agreement_matrices_against_scipy():
    rng = np.random.default_rng(0)
    tasks = {name: rng.random(8).tolist() for name in ("sst2", "mrpc", "rte")}
    result = task_agreement(tasks)
    assert result["tasks"] == ["sst2", "mrpc", "rte"]
    for measure, oracle in (("spearman", stats.spearmanr), ("kendall", stats.kendalltau)):
        matrix = np.array([list(result[measure][a].values()) for a in tasks])
        expected = np.array([[oracle(tasks[a], tasks[b]).statistic for b in tasks] for a in tasks])
        np.testing.assert_allclose(matrix, expected, atol=1e-12)
        assert result["mean_off_diagonal"][measure] == pytest.approx(expected[np.triu_indices(3, 1)].mean())
        assert result["off_diagonal"][measure]["n"] == 3


def test_task_agreement_constant_task_is_none_with_reason():
    result = task_agreement({"a": DESC, "b": ONE_SWAP, "flat": [0.5] * 4})
    kendall = result["kendall"]
    assert kendall["a"]["b"] == pytest.approx(2 / 3)
    assert kendall["flat"] == {"a": None, "b": None, "flat": None}
    assert result["mean_off_diagonal"]["kendall"] == pytest.approx(2 / 3)
    assert result["off_diagonal"]["kendall"]["n_undefined"] == 2
    assert result["undefined"] == ["flat is constant across layers"]
    assert "n/a" in agreement.markdown(result)
    _no_nan_json(json.dumps(result))


def test_scorer_agreement_matrices_and_plans():
    scores = {"activation_norm": [0.1, 0.9, 0.5, 1.0, 0.0], "cka": [0.0, 0.2, 1.0, 0.6, 0.4]}
    result = agreement.scorer_agreement(scores, [1, 2])
    expected = stats.spearmanr(scores["activation_norm"], scores["cka"]).statistic
    assert result["spearman"]["activation_norm"]["cka"] == pytest.approx(expected, abs=1e-12)
    # top-k by hand: activation 3 > 1 > 2; cka 2 > 3 > 4
    assert result["plans"] == {
        "1": {"activation_norm": [3], "cka": [2]},
        "2": {"activation_norm": [1, 3], "cka": [2, 3]},
    }
    md = agreement.markdown(result, label="Scorer")
    assert "| Scorer |" in md and "| 2 | 1, 3 | 2, 3 |" in md


# ---- correlation with a reference (Table 11) ----


def test_correlations_match_scipy_and_cosine_by_hand():
    rng = np.random.default_rng(1)
    reference = rng.random(12).tolist()
    scorers = {"actnorm": rng.random(12).tolist(), "gradnorm": rng.random(12).tolist()}
    result = correlate_with_reference(scorers, reference)
    assert list(result) == ["actnorm", "gradnorm"]
    for name, scores in scorers.items():
        row = result[name]
        assert row["pearson"] == pytest.approx(stats.pearsonr(scores, reference).statistic, abs=1e-12)
        assert row["spearman"] == pytest.approx(stats.spearmanr(scores, reference).statistic, abs=1e-12)
        assert row["kendall"] == pytest.approx(stats.kendalltau(scores, reference).statistic, abs=1e-12)
        assert row["undefined"] == {}
    hand = correlate_with_reference({"x": [1.0, 0.0, 1.0], "double": [2.0, 2.0, 0.0]}, [1.0, 1.0, 0.0])
    assert hand["x"]["cosine"] == pytest.approx(0.5, abs=1e-15)  # 1 / (sqrt 2 sqrt 2)
    double = hand["double"]  # 2 x reference: every measure is 1
    assert [double[m] for m in correlation.MEASURES] == pytest.approx([1.0] * 4, abs=1e-12)


def test_constant_and_zero_scorers_are_none_with_reasons():
    result = correlate_with_reference({"flat": [1.0, 1.0, 1.0], "zero": [0.0, 0.0, 0.0]}, [1.0, 2.0, 2.0])
    flat, zero = result["flat"], result["zero"]
    assert flat["pearson"] is flat["spearman"] is flat["kendall"] is None
    assert flat["undefined"]["pearson"] == "flat is constant across layers"
    # a flat profile still has a direction: cos = 5 / (sqrt 3 * 3)
    assert flat["cosine"] == pytest.approx(5 / (math.sqrt(3) * 3), abs=1e-15)
    assert zero["cosine"] is None and zero["undefined"]["cosine"] == "zero is all zeros"
    _no_nan_json(json.dumps(result))
    table = correlation.markdown(result)
    assert "| flat | n/a | n/a | n/a | 0.9623 |" in table
    assert "- zero, cosine: n/a because zero is all zeros" in table


def test_correlation_reports_every_length_mismatch_together():
    with pytest.raises(ActloraError) as info:
        correlate_with_reference({"a": [1.0, 2.0], "b": [1.0, 2.0, 3.0, 4.0]}, [1.0, 2.0, 3.0])
    assert [p.where for p in info.value.problems] == ["scorer 'a'", "scorer 'b'"]
    assert "has 2 layer scores but reference has 3" in info.value.problems[0].what


# ---- cumulative importance thresholds (Table 8) ----


def test_threshold_table_hand_example_has_the_paper_shape():
    # descending 1, .9, .7, .55, .5, .45, .35, .3, .25, .2, .1, 0 (total 5.3), shuffled over 12 layers
    scores = [0.35, 0.0, 1.0, 0.5, 0.2, 0.9, 0.3, 0.55, 0.1, 0.7, 0.45, 0.25]
    table = threshold_table(scores)
    assert [(r["tau"], r["k"]) for r in table] == [(0.25, 2), (0.5, 4), (0.75, 6), (1.0, 11)]  # as in Table 8
    assert [r["C(k)"] for r in table] == pytest.approx([1.9 / 5.3, 3.15 / 5.3, 4.1 / 5.3, 1.0], abs=1e-12)
    assert thresholds.markdown(table).splitlines()[2] == "| 25% | 2 | 0.3585 |"


def test_threshold_table_agrees_with_selection():
    scores = np.random.default_rng(2).random(9).tolist()
    taus = [0.1, 0.33, 0.5, 0.9, 1.0]
    curve = cumulative_importance(scores)
    assert threshold_table(scores, taus) == [
        {"tau": t, "k": k_for_tau(scores, t), "C(k)": curve[k_for_tau(scores, t) - 1]} for t in taus
    ]
    with pytest.raises(ActloraError, match=r"\[0.0, 1.5\] outside \(0, 1\]"):
        threshold_table(scores, [0.0, 0.5, 1.5])


# ---- reports ----


def test_markdown_table_formats_cells():
    rows = [["a|b", 2 / 3, 4], ["tiny", 0.00051, None], ["zero", 0.0, True]]
    assert markdown_table(["name", "value", "k"], rows).splitlines() == [
        "| name | value | k |",
        "|---|---|---|",
        "| a\\|b | 0.6667 | 4 |",
        "| tiny | 0.00051 | n/a |",
        "| zero | 0.0000 | True |",
    ]
    assert format_value(float("nan")) == "n/a"
    with pytest.raises(ValueError, match=r"rows \[0\]"):
        markdown_table(["a", "b"], [[1]])


def test_write_study_is_a_valid_study_artefact(tmp_path):
    result = seed_stability([[1.0] * 4, DESC, ONE_SWAP], ks=[1, 2])  # holds undefined (None) values
    markdown = stability.markdown(result)
    json_path, md_path, page_path = write_study(tmp_path / "studies", "seed_stability", result, markdown)
    doc = _no_nan_json(json_path.read_text())
    assert (doc["kind"], doc["schema_version"], doc["study"]) == ("study", SCHEMA_VERSION, "seed_stability")
    assert doc["result"] == result
    assert read_artifact(json_path, "study") == doc
    assert md_path.read_text() == markdown
    assert "<table>" in page_path.read_text()
    names = sorted(p.name for p in json_path.parent.iterdir())
    assert names == ["seed_stability.html", "seed_stability.json", "seed_stability.md"]


def test_write_study_refuses_nan(tmp_path):
    with pytest.raises(ActloraError, match="NaN or infinity"):
        write_study(tmp_path, "bad", {"tau": float("nan")}, "")
    assert list(tmp_path.iterdir()) == []


# ---- plots ----


def _png(path, width: int, height: int):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = mpimg.imread(path)
    assert pixels.shape[:2] == (height, width)
    assert pixels[..., :3].std() > 0  # something was drawn


def test_plots_write_readable_pngs(tmp_path):
    scores = [0.2, 1.0, 0.6, 0.0]
    _png(plots.plot_layer_scores(scores, [1, 2], tmp_path / "a" / "scores.png", "scores"), 600, 400)
    _png(plots.plot_cumulative(scores, [0.25, 0.5, 1.0], tmp_path / "cumulative.png"), 600, 400)
    _png(plots.plot_seed_scores([scores, [0.1, 1.0, 0.5, 0.0]], tmp_path / "seeds.png"), 600, 400)
    heat = {"actnorm": scores, "fisher": [0.5, None, 0.1, 0.3]}
    _png(plots.plot_heatmap(heat, tmp_path / "heat.png", "scorers"), 600, 240)
    wide = plots.plot_layer_scores(list(np.linspace(0, 1, 32)), [0], tmp_path / "wide.png", "32 layers")
    _png(wide, 1640, 400)  # widens with the layer count


def test_analysis_never_imports_torch():
    code = "import sys, actlora_cli.analysis, actlora_cli.analysis.plots; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
