"""Our GLUE metrics against scikit-learn and scipy (what GLUE's own metric module calls)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from actlora_cli import metrics


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, 2, 200)
    pred = np.where(rng.random(200) < 0.7, gold, 1 - gold)
    assert metrics.accuracy(pred, gold) == pytest.approx(accuracy_score(gold, pred), abs=1e-12)
    assert metrics.f1(pred, gold) == pytest.approx(f1_score(gold, pred), abs=1e-12)
    assert metrics.matthews(pred, gold) == pytest.approx(matthews_corrcoef(gold, pred), abs=1e-12)
    three_gold, three_pred = rng.integers(0, 3, 300), rng.integers(0, 3, 300)
    assert metrics.matthews(three_pred, three_gold) == pytest.approx(
        matthews_corrcoef(three_gold, three_pred), abs=1e-12
    )


def test_degenerate_cases_match_sklearn():
    gold = np.array([1, 1, 1, 1])
    pred = np.array([1, 1, 1, 1])
    assert metrics.matthews(pred, gold) == matthews_corrcoef(gold, pred) == 0.0
    assert metrics.f1(np.zeros(4, int), gold) == f1_score(gold, np.zeros(4, int), zero_division=0.0)


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, 6, 150).astype(float)  # many ties, as STS-B's 0..5 scale has
    pred = gold + rng.normal(0, 1.5, 150)
    pred[:20] = np.round(pred[:20])
    assert metrics.pearson(pred, gold) == pytest.approx(pearsonr(pred, gold)[0], abs=1e-10)
    assert metrics.spearman(pred, gold) == pytest.approx(spearmanr(pred, gold)[0], abs=1e-10)


def test_compute_uses_argmax_or_the_regression_output():
    logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.0, 3.0]])
    assert metrics.compute(("accuracy",), logits, np.array([1, 0, 0]), False) == {
        "accuracy": pytest.approx(2 / 3)
    }
    reg = np.array([[1.0], [2.0], [3.5]])
    out = metrics.compute(("pearson", "spearman"), reg, np.array([1.0, 2.0, 3.0]), True)
    assert out["spearman"] == pytest.approx(1.0) and 0.9 < out["pearson"] < 1.0


def test_evaluation_loss_by_hand_and_against_torch():
    import math

    import torch
    import torch.nn.functional as F

    from actlora_cli import metrics

    logits = np.array([[2.0, 0.0], [0.0, 1.0], [1000.0, -1000.0]])
    labels = np.array([0, 0, 1])
    # -log softmax of the gold class: log(1 + e^-2), log(1 + e^1), 2000 (no overflow at a logit of 1000)
    by_hand = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(1)) + 2000.0) / 3
    assert metrics.loss(logits, labels, regression=False) == pytest.approx(by_hand)
    rng = np.random.default_rng(0)
    many, gold = rng.normal(size=(50, 3)), rng.integers(0, 3, 50)
    torch_ce = F.cross_entropy(torch.tensor(many), torch.tensor(gold)).item()
    assert metrics.loss(many, gold, regression=False) == pytest.approx(torch_ce, rel=1e-12)
    # regression: mean squared error of the single output
    assert metrics.loss(np.array([[1.0], [3.0]]), np.array([2.0, 2.0]), regression=True) == pytest.approx(1.0)
    out = metrics.evaluate(("accuracy",), logits, labels, regression=False)
    assert list(out) == ["accuracy", "loss"] and out["accuracy"] == pytest.approx(1 / 3)
