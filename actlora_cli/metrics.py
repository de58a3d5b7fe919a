"""GLUE metrics, computed offline from predictions and labels (``evaluate.load("glue")`` fetches code from
the hub at run time). Pearson and Spearman come from scipy, a dependency anyway (the correlation study);
accuracy, F1 and Matthews are a few lines of numpy each, tested against scikit-learn, which is therefore
needed by the tests only."""

from __future__ import annotations

import numpy as np
from scipy import stats


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return float(np.mean(pred == gold))


def f1(pred: np.ndarray, gold: np.ndarray) -> float:
    """Binary F1 of the positive class (label 1), as GLUE scores MRPC and QQP."""
    tp = float(np.sum((pred == 1) & (gold == 1)))
    fp = float(np.sum((pred == 1) & (gold != 1)))
    fn = float(np.sum((pred != 1) & (gold == 1)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def matthews(pred: np.ndarray, gold: np.ndarray) -> float:
    """Matthews correlation (multi-class form, which reduces to the binary one), as GLUE scores CoLA."""
    classes = np.union1d(pred, gold)
    conf = np.array([[np.sum((gold == a) & (pred == b)) for b in classes] for a in classes], dtype=np.float64)
    t, p = conf.sum(axis=1), conf.sum(axis=0)
    c, s = np.trace(conf), conf.sum()
    denom = np.sqrt((s * s - p @ p) * (s * s - t @ t))
    return 0.0 if denom == 0 else float((c * s - t @ p) / denom)


def _correlation(fn, x: np.ndarray, y: np.ndarray) -> float:
    """scipy's coefficient, as GLUE's STS-B metric computes it; 0.0 where it is undefined (a constant
    input: a model that predicts one value for every pair has no correlation to report, and NaN would
    poison means)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return 0.0
    return float(fn(x, y)[0])


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    return _correlation(stats.pearsonr, x, y)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return _correlation(stats.spearmanr, x, y)


METRICS = {"accuracy": accuracy, "f1": f1, "matthews": matthews, "pearson": pearson, "spearman": spearman}


def compute(
    names: tuple[str, ...], logits: np.ndarray, labels: np.ndarray, regression: bool
) -> dict[str, float]:
    """The task's metrics from raw logits: argmax for classes, the single output for regression."""
    pred = logits[:, 0] if regression else logits.argmax(axis=-1)
    return {name: METRICS[name](pred, labels) for name in names}


def loss(logits: np.ndarray, labels: np.ndarray, regression: bool) -> float:
    """The evaluation loss (the paper's Table 6 and Fig. 5): the training objective on the evaluation split,
    mean cross-entropy from the logits (log-sum-exp shifted by the maximum), or mean squared error of the
    single output for regression."""
    logits = np.asarray(logits, dtype=np.float64)
    if regression:
        return float(np.mean((logits[:, 0] - np.asarray(labels, dtype=np.float64)) ** 2))
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    picked = shifted[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)]
    return float(np.mean(log_norm - picked))


def evaluate(
    names: tuple[str, ...], logits: np.ndarray, labels: np.ndarray, regression: bool
) -> dict[str, float]:
    """The task's metrics, then the evaluation loss (last: readers that take a run's first metric as its
    headline keep the task's)."""
    return {**compute(names, logits, labels, regression), "loss": loss(logits, labels, regression)}


def task_score(metrics_by_split: dict[str, dict[str, float]]) -> float | None:
    """One number per task, as GLUE averages them: the mean of the task's metrics (accuracy and F1 for MRPC
    and QQP, Pearson and Spearman for STS-B), over its evaluation splits (MNLI's matched and mismatched); the
    loss is not a metric here. None when there is none."""
    values = [v for split in metrics_by_split.values() for name, v in split.items() if name != "loss"]
    return sum(values) / len(values) if values else None
