"""Evaluation metrics computed locally with numpy (no metric downloads), as GLUE defines them.

    cola          matthews_correlation
    mrpc, qqp     accuracy, f1 (positive class 1)
    stsb          pearson, spearmanr (regression)
    others, imdb  accuracy
    multi-label   micro / macro F1 of sigmoid(logits) > 0.3 (SparseML's threshold)

`compute_metrics_fn(...)` returns the callable the Trainer takes as `compute_metrics`.
Every single-label evaluation also reports `predicted_classes` and warns loudly when a model
predicts one class for everything (a collapsed model can still score a plausible accuracy).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

MULTI_LABEL_THRESHOLD = 0.3

GLUE_METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("matthews_correlation",),
    "sst2": ("accuracy",),
    "mrpc": ("accuracy", "f1"),
    "qqp": ("accuracy", "f1"),
    "stsb": ("pearson", "spearmanr"),
    "mnli": ("accuracy",),
    "mnli_mismatched": ("accuracy",),
    "mnli_matched": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "wnli": ("accuracy",),
    "imdb": ("accuracy",),
}


def accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(preds) == np.asarray(labels)).mean())


def f1_binary(preds: np.ndarray, labels: np.ndarray, positive: int = 1) -> float:
    preds, labels = np.asarray(preds), np.asarray(labels)
    tp = float(((preds == positive) & (labels == positive)).sum())
    fp = float(((preds == positive) & (labels != positive)).sum())
    fn = float(((preds != positive) & (labels == positive)).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def matthews_correlation(preds: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Matthews correlation (Gorodkin's formula, as scikit-learn computes it)."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    classes = np.union1d(preds, labels)
    index = {c: i for i, c in enumerate(classes)}
    confusion = np.zeros((len(classes), len(classes)), dtype=np.float64)
    for p, t in zip(preds, labels, strict=True):
        confusion[index[t], index[p]] += 1
    t_sum, p_sum = confusion.sum(axis=1), confusion.sum(axis=0)
    correct, n = np.trace(confusion), confusion.sum()
    cov_ytyp = correct * n - np.dot(t_sum, p_sum)
    cov_ypyp = n**2 - np.dot(p_sum, p_sum)
    cov_ytyt = n**2 - np.dot(t_sum, t_sum)
    denominator = np.sqrt(cov_ytyt * cov_ypyp)
    return float(cov_ytyp / denominator) if denominator else 0.0


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denominator) if denominator else 0.0


def _average_ranks(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation with tied values given their average rank."""
    return pearson(_average_ranks(x), _average_ranks(y))


def multilabel_f1(predicted: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Micro and macro F1 over a 0/1 matrix of (examples, labels)."""
    predicted, labels = np.asarray(predicted).astype(bool), np.asarray(labels).astype(bool)
    tp = (predicted & labels).sum(axis=0).astype(np.float64)
    fp = (predicted & ~labels).sum(axis=0).astype(np.float64)
    fn = (~predicted & labels).sum(axis=0).astype(np.float64)
    micro_den = 2 * tp.sum() + fp.sum() + fn.sum()
    per_label_den = 2 * tp + fp + fn
    per_label = np.divide(2 * tp, per_label_den, out=np.zeros_like(tp), where=per_label_den > 0)
    return {
        "f1_micro": float(2 * tp.sum() / micro_den) if micro_den else 0.0,
        "f1_macro": float(per_label.mean()) if len(per_label) else 0.0,
    }


def collapse_check(predicted: Iterable[Any], expected: Iterable[Any]) -> dict[str, float]:
    """`predicted_classes`: how many distinct classes the model predicted; a warning if only one.

    A model that predicts one class for every example (all-`O` in NER, one label in
    classification) while the labels hold several has collapsed: training was too short, the
    learning rate too high, or pruning too fast. Its accuracy can still look plausible, so say so.
    """
    predicted_set, expected_set = set(predicted), set(expected)
    if len(predicted_set) == 1 and len(expected_set) > 1:
        (only,) = predicted_set
        logger.warning(
            "THE MODEL PREDICTS A SINGLE CLASS (%r) FOR EVERY EVALUATED EXAMPLE, while the labels "
            "hold %d classes: it has collapsed (too short a training, too high a learning rate, or "
            "pruning too fast for the budget); its metrics describe a constant predictor",
            only,
            len(expected_set),
        )
    return {"predicted_classes": float(len(predicted_set))}


def classification_metrics(
    logits: np.ndarray,
    labels: np.ndarray,
    task_name: str | None = None,
    is_regression: bool = False,
    is_multi_label: bool = False,
) -> dict[str, float]:
    """Metrics of one evaluation: GLUE's per task, micro/macro F1 for multi-label, else accuracy."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if is_multi_label:
        probabilities = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        return multilabel_f1(probabilities > MULTI_LABEL_THRESHOLD, labels)
    if is_regression:
        predictions = logits.reshape(-1)
        result = {
            "pearson": pearson(predictions, labels),
            "spearmanr": spearman(predictions, labels),
        }
        result["combined_score"] = (result["pearson"] + result["spearmanr"]) / 2
        result["mse"] = float(((predictions - labels.reshape(-1)) ** 2).mean())
        return result
    predictions = logits.argmax(axis=-1)
    names = GLUE_METRICS.get(task_name or "", ("accuracy",))
    functions: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
        "accuracy": accuracy,
        "f1": f1_binary,
        "matthews_correlation": matthews_correlation,
    }
    result = {name: functions[name](predictions, labels) for name in names}
    if len(result) > 1:
        result["combined_score"] = float(np.mean(list(result.values())))
    result.update(collapse_check(predictions.tolist(), labels.reshape(-1).tolist()))
    return result


def compute_metrics_fn(
    task_name: str | None = None, is_regression: bool = False, is_multi_label: bool = False
) -> Callable[[Any], dict[str, float]]:
    """The Trainer's `compute_metrics`: takes an `EvalPrediction`, returns `classification_metrics`."""

    def compute(prediction: Any) -> dict[str, float]:
        logits = prediction.predictions
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        return classification_metrics(
            logits, prediction.label_ids, task_name, is_regression, is_multi_label
        )

    return compute
