"""GLUE metrics computed locally, checked against hand-computed values."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from sparseforge.transformers.metrics import (
    classification_metrics,
    compute_metrics_fn,
    f1_binary,
    matthews_correlation,
    multilabel_f1,
    pearson,
    spearman,
)


def test_binary_metrics_by_hand():
    preds = np.array([1, 1, 0, 0, 1, 0])
    labels = np.array([1, 0, 0, 1, 1, 0])
    # tp=2 fp=1 fn=1 tn=2
    assert f1_binary(preds, labels) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert matthews_correlation(preds, labels) == pytest.approx(
        (2 * 2 - 1 * 1) / math.sqrt(3 * 3 * 3 * 3)
    )
    assert matthews_correlation(np.array([1, 1]), np.array([1, 1])) == 0.0


def test_correlations_with_ties():
    x = [1.0, 2.0, 2.0, 4.0]
    y = [2.0, 1.0, 3.0, 5.0]
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
    # ranks with ties averaged: x -> 1, 2.5, 2.5, 4 ; y -> 2, 1, 3, 4
    assert spearman(x, y) == pytest.approx(np.corrcoef([1, 2.5, 2.5, 4], [2, 1, 3, 4])[0, 1])


def test_multilabel_f1_micro_and_macro():
    predicted = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    labels = np.array([[1, 0, 0], [0, 1, 1], [1, 0, 0]])
    # per label: tp=(2,1,0) fp=(0,1,1) fn=(0,0,1)
    result = multilabel_f1(predicted, labels)
    assert result["f1_micro"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert result["f1_macro"] == pytest.approx((1.0 + 2 / 3 + 0.0) / 3)


def test_per_task_metric_names():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    labels = np.array([1, 0, 0])
    assert set(classification_metrics(logits, labels, "cola")) == {
        "matthews_correlation",
        "predicted_classes",
    }
    assert set(classification_metrics(logits, labels, "mrpc")) == {
        "accuracy",
        "f1",
        "combined_score",
        "predicted_classes",
    }
    assert classification_metrics(logits, labels, "sst2") == {
        "accuracy": pytest.approx(2 / 3),
        "predicted_classes": 2.0,
    }
    stsb = classification_metrics(
        np.array([[0.5], [2.0], [3.5]]), np.array([1.0, 2.0, 3.0]), "stsb", is_regression=True
    )
    assert stsb["pearson"] == pytest.approx(pearson([0.5, 2.0, 3.5], [1.0, 2.0, 3.0])) and stsb[
        "spearmanr"
    ] == pytest.approx(1.0)
    # multi-label: sigmoid > 0.3, i.e. logit > log(0.3 / 0.7)
    threshold = math.log(0.3 / 0.7)
    multi = compute_metrics_fn(is_multi_label=True)(
        SimpleNamespace(
            predictions=(np.array([[threshold + 0.01, threshold - 0.01]]),),
            label_ids=np.array([[1, 0]]),
        )
    )
    assert multi == {"f1_micro": 1.0, "f1_macro": pytest.approx(0.5)}


def test_a_single_predicted_class_is_reported_loudly(caplog):
    labels = np.array([0, 1, 2, 1])
    collapsed = np.array([[0.1, 0.9, 0.0]] * 4)  # always class 1
    with caplog.at_level("WARNING", logger="sparseforge.transformers.metrics"):
        result = classification_metrics(collapsed, labels)
    assert result == {"accuracy": 0.5, "predicted_classes": 1.0}
    assert "PREDICTS A SINGLE CLASS (1)" in caplog.text and "labels hold 3 classes" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="sparseforge.transformers.metrics"):
        assert classification_metrics(np.eye(3)[[0, 1, 2, 2]], labels)["predicted_classes"] == 3.0
        # one class in the labels too: nothing to warn about
        assert classification_metrics(collapsed[:2], np.array([1, 1]))["predicted_classes"] == 1.0
    assert "SINGLE CLASS" not in caplog.text
