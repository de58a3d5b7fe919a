"""Scores -> layer plan: min-max, ranking, C(k), k_tau and select, against hand-worked values."""

from __future__ import annotations

from fractions import Fraction
from itertools import pairwise

import numpy as np
import pytest

from actlora_cli.errors import ArtifactError, ConfigError
from actlora_cli.selection import cumulative_importance, k_for_tau, min_max, ranking, select

HAND = [0.0, 1.0, 0.5, 0.25]  # sorted 1, .5, .25, 0; total 1.75


def test_min_max_hand_values():
    assert min_max([2.0, 4.0, 3.0]) == ([0.0, 1.0, 0.5], False)
    assert min_max([-2.0, 0.0, 2.0, 1.0]) == ([0.0, 0.5, 1.0, 0.75], False)
    values, flat = min_max([10.0, 12.0, 11.5, 10.5])
    assert values == pytest.approx([0.0, 1.0, 0.75, 0.25], abs=1e-15)
    assert not flat


@pytest.mark.parametrize("values", [[5.0, 5.0, 5.0], [1.0, 1.0 + 1e-15], [0.0] * 6, [19.6] * 12])
def test_min_max_flat_profile_is_all_ones_and_flagged(values):
    assert min_max(values) == ([1.0] * len(values), True)


def test_ranking_descending_with_ties_to_lower_index():
    assert ranking([0.5, 1.0, 0.5, 1.0, 0.0]) == [1, 3, 0, 2, 4]
    assert ranking([1.0] * 4) == [0, 1, 2, 3]
    assert ranking(HAND) == [1, 2, 3, 0]


def test_cumulative_importance_hand_example():
    curve = cumulative_importance(HAND)
    assert curve == pytest.approx([1 / 1.75, 1.5 / 1.75, 1.0, 1.0], abs=1e-15)
    assert curve[-1] == 1.0


def test_cumulative_importance_all_zero_is_uniform():
    assert cumulative_importance([0.0, 0.0, 0.0, 0.0]) == [0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize(
    ("tau", "k"),
    [
        (1.0, 3),  # least k with C(k) = 1: the zero-score layer is not needed
        (1e-9, 1),
        (1 / 1.75, 1),  # exactly C(1)
        (0.5, 1),
        (0.6, 2),  # between C(1) and C(2)
        (1.5 / 1.75, 2),  # exactly C(2)
        (0.9, 3),
    ],
)
def test_k_for_tau_hand_example(tau, k):
    assert k_for_tau(HAND, tau) == k


@pytest.mark.parametrize(
    ("scores", "tau", "k"),
    [
        # C(1) = 0.6 / 0.8 evaluates to 0.7499999999999999 < 0.75
        ([0.6, 0.2], 0.75, 1),
        # C(2) = (0.7 + 0.35) / 1.4 evaluates to 0.7499999999999999 < 0.75
        ([0.3, 0.7, 0.05, 0.35], 0.75, 2),
        ([0.3, 0.7, 0.4], 0.5, 1),
    ],
)
def test_k_for_tau_exact_decimal_tau_survives_float_rounding(scores, tau, k):
    exact = sum(Fraction(s) for s in sorted(scores, reverse=True)[:k]) / sum(Fraction(s) for s in scores)
    assert abs(exact - Fraction(tau)) < Fraction(1, 10**15)  # tau is C(k) up to the decimal literal
    assert cumulative_importance(scores)[k - 1] < tau  # the float C(k) falls one ulp short
    assert k_for_tau(scores, tau) == k


def test_k_for_tau_one_on_all_positive_scores_is_every_layer():
    scores = [0.1, 0.3, 0.7, 0.2, 0.9, 1.0, 0.05]
    assert k_for_tau(scores, 1.0) == len(scores)


def test_select_top_k_ascending():
    scores = [0.2, 0.9, 0.1, 0.9, 0.5]
    plan = select(scores, k=2)
    assert plan.layers == [1, 3]
    assert (plan.k, plan.tau, plan.rule) == (2, None, "top_k")
    assert plan.ranking == [1, 3, 4, 0, 2]
    plan = select(scores, k=4)
    assert plan.layers == [0, 1, 3, 4]  # ascending, not in ranking order
    assert plan.cumulative_importance == cumulative_importance(scores)


def test_select_all_and_tau():
    plan = select(HAND, k="all")
    assert (plan.layers, plan.k, plan.rule) == ([0, 1, 2, 3], 4, "all")
    plan = select(HAND, tau=0.6)
    assert (plan.layers, plan.k, plan.tau, plan.rule) == ([1, 2], 2, 0.6, "tau")
    plan = select(HAND, tau=1.0)
    assert plan.layers == [1, 2, 3]


@pytest.mark.parametrize(("k", "tau"), [(None, None), (2, 0.5), ("all", 0.5)])
def test_select_needs_exactly_one_rule(k, tau):
    with pytest.raises(ConfigError) as info:
        select(HAND, k=k, tau=tau)
    assert [p.where for p in info.value.problems] == ["rank.k / rank.tau"]


@pytest.mark.parametrize("k", [0, 5, 100])
def test_select_k_out_of_range(k):
    with pytest.raises(ConfigError) as info:
        select(HAND, k=k)
    (problem,) = info.value.problems
    assert problem.where == "rank.k"
    assert f"k={k} but the model has 4 layers" in problem.what
    assert "1..4" in problem.fix


def _exact_curve(scores: list[float]) -> list[Fraction]:
    ordered = sorted((Fraction(s) for s in scores), reverse=True)
    total = sum(ordered)
    out, running = [], Fraction(0)
    for s in ordered:
        running += s
        out.append(running / total)
    return out


def test_curve_and_k_tau_properties_on_random_scores():
    rng = np.random.default_rng(1234)
    for trial in range(300):
        n = int(rng.integers(1, 49))
        raw = rng.gamma(0.7, size=n) if trial % 3 else rng.normal(size=n)
        scores, flat = min_max(raw.tolist())
        if trial % 5 == 0 and n > 3:  # several layers tied at zero
            scores = [0.0 if s < 0.3 else s for s in scores]
        assert flat == (n == 1)
        curve = cumulative_importance(scores)
        assert len(curve) == n
        assert all(b >= a for a, b in pairwise(curve))
        assert curve[-1] == 1.0
        exact = _exact_curve(scores)
        assert curve == pytest.approx([float(c) for c in exact], abs=1e-12)
        # the least k whose C(k) reaches 1 is the number of nonzero scores
        assert k_for_tau(scores, 1.0) == max(1, sum(s > 0 for s in scores))
        for tau in rng.uniform(1e-6, 1.0, size=8):
            if any(abs(c - Fraction(float(tau))) < Fraction(1, 10**9) for c in exact):
                continue  # too close to a step to be decided by floats
            k = k_for_tau(scores, float(tau))
            assert exact[k - 1] >= Fraction(float(tau))
            assert k == 1 or exact[k - 2] < Fraction(float(tau))  # minimal
            plan = select(scores, tau=float(tau))
            assert plan.layers == sorted(ranking(scores)[:k])


# CKA leaves layer 0 undefined (None: score 0 after min-max, like the least-dissimilar defined layer 2); these
# are the committed results/studies/minilm/scores/cka_seed0 scores
CKA_SCORES = [0.0, 0.39749027195706205, 0.0, 0.3266601009543332, 0.5913499628013996, 1.0]


@pytest.mark.parametrize("k", range(1, 7))
def test_an_undefined_layer_is_chosen_last_at_every_k(k):
    plan = select(CKA_SCORES, k=k, undefined=[0])
    assert plan.ranking == [5, 4, 1, 3, 2, 0]
    assert (0 in plan.layers) == (k == 6)
    assert plan.layers == sorted([5, 4, 1, 3, 2, 0][:k])
    # without the information, the index tie-break would pick the undefined layer 0 before layer 2 at k = 5
    assert select(CKA_SCORES, k=5).layers == [0, 1, 3, 4, 5]


@pytest.mark.parametrize("tau", [0.05, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0])
def test_an_undefined_layer_is_never_needed_to_reach_tau(tau):
    plan = select(CKA_SCORES, tau=tau, undefined=[0])
    assert 0 not in plan.layers
    # tau = 1.0 takes every layer with a positive score: here 4, as min-max also gives the least-dissimilar
    # defined layer 0
    assert tau < 1.0 or plan.layers == [1, 3, 4, 5]


def test_rank_stage_ranks_a_scorers_undefined_layers_last(tmp_path):
    from actlora_cli import artifacts
    from actlora_cli.config import load_config
    from actlora_cli.rank import run_rank

    cfg = load_config(values={"output_dir": str(tmp_path), "rank.k": 5})
    payload = {"scores": CKA_SCORES, "undefined_layers": [0], "scorer": "cka", "site": None,
               "model": {"name": cfg.model.name, "num_layers": 6}, "task": {"name": "movies"}}  # fmt: skip
    artifacts.write_artifact(tmp_path / "scores.json", "scores", payload)
    assert run_rank(cfg)["layers"] == [1, 2, 3, 4, 5]


def test_a_plan_from_another_models_scores_does_not_fit():
    """Top-3 of 12 scores can name only layers a 6-layer model has; the ranking's length still tells the
    scores were made for another model."""
    plan = select([12.0 - i for i in range(12)], k=3)
    assert plan.layers == [0, 1, 2]
    with pytest.raises(ArtifactError) as info:
        plan.check_fits(6, "run/scores.json (k=3, tau=None)")
    (problem,) = info.value.problems
    assert problem.where == "run/scores.json (k=3, tau=None)"
    assert problem.what == "made from scores of 12 layers, but the model has 6 layers"
    plan.check_fits(12, "run/scores.json")


def test_min_max_carries_standard_errors_to_the_score_scale():
    from actlora_cli.selection import min_max_stderr

    assert min_max_stderr([2.0, None, 6.0, 4.0], [0.4, 0.1, 0.2, 0.8]) == pytest.approx(
        [0.1, 0.025, 0.05, 0.2]
    )
    assert min_max_stderr([1.0, 1.0], [0.1, 0.1]) is None and min_max_stderr([1.0, 2.0], None) is None


def test_a_boundary_within_the_probes_noise_is_warned_and_recorded(tmp_path, capsys):
    """Scores 1.0, 0.5, 0.49, 0.0 at k=2: layers 1 (0.5) in and 2 (0.49) out, a gap of 0.01 against a
    standard error of the difference of sqrt(0.02^2 + 0.03^2) = 0.036: within noise. At k=1 the gap is 0.5."""
    from actlora_cli import artifacts
    from actlora_cli.config import load_config
    from actlora_cli.rank import run_rank

    payload = {"scores": [1.0, 0.5, 0.49, 0.0], "score_stderr": [0.01, 0.02, 0.03, 0.01],
               "scorer": "activation_norm", "site": "post_attn", "model": {"name": "tiny", "num_layers": 4},
               "task": {"name": "movies"}}  # fmt: skip
    artifacts.write_artifact(tmp_path / "scores.json", "scores", payload)
    cfg = load_config(values={"output_dir": str(tmp_path), "model.name": "tiny", "rank.k": 2})
    edge = run_rank(cfg)["boundary"]
    assert (edge["last_in"], edge["first_out"], edge["within_noise"]) == (1, 2, True)
    assert edge["gap"] == pytest.approx(0.01) and edge["noise"] == pytest.approx((0.02**2 + 0.03**2) ** 0.5)
    assert "boundary lies within the probe's noise: layer 1 is in and layer 2 out" in capsys.readouterr().err
    edge = run_rank(cfg.with_overrides({"rank.k": 1}))["boundary"]
    assert edge["within_noise"] is False and edge["gap"] == pytest.approx(0.5)
    assert "within the probe's noise" not in capsys.readouterr().err
    # a plan by position has no guided boundary
    assert run_rank(cfg.with_overrides({"rank.strategy": "last"}))["boundary"] is None


@pytest.mark.parametrize(
    ("scores", "stderr", "expected"),
    [
        ([1.0, 0.5, 0.49, 0.0], [0.01, 0.02, 0.03, 0.01], [0, 2]),  # tied, the higher layer 2 out: taken
        ([1.0, 0.5, 0.49, 0.0], [0.001, 0.001, 0.001, 0.001], [0, 1]),  # told apart (0.01 vs 0.0014): kept
        ([0.49, 0.5, 1.0, 0.0], [0.02, 0.02, 0.01, 0.01], [1, 2]),  # tied, but layer 0 out is lower: kept
    ],
)
def test_cost_tie_break_takes_the_higher_of_two_tied_layers(tmp_path, scores, stderr, expected):
    from actlora_cli import artifacts
    from actlora_cli.config import load_config
    from actlora_cli.rank import run_rank

    payload = {"scores": scores, "score_stderr": stderr, "scorer": "activation_norm", "site": "post_attn",
               "model": {"name": "tiny", "num_layers": 4}, "task": {"name": "movies"}}  # fmt: skip
    artifacts.write_artifact(tmp_path / "scores.json", "scores", payload)
    cfg = load_config(values={"output_dir": str(tmp_path), "model.name": "tiny", "rank.k": 2})
    doc = run_rank(cfg.with_overrides({"rank.tie_break": "cost"}))
    assert doc["layers"] == expected
    assert doc["boundary"]["swapped_for_cost"] == (expected == [0, 2])
    assert run_rank(cfg)["layers"] == sorted(sorted(range(4), key=lambda i: (-scores[i], i))[:2])
