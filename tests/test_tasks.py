"""Task names and SparseML's aliases."""

from __future__ import annotations

import pytest

from sparseforge import SparseforgeError
from sparseforge.tasks import AUTO_MODEL_CLASSES, TASK_OUTPUTS, TASKS, normalize_task


@pytest.mark.parametrize(
    ("alias", "task"),
    [
        ("glue", "text-classification"),
        ("sentiment_analysis", "text-classification"),
        ("text_classification", "text-classification"),
        ("NER", "token-classification"),
        ("token_classification", "token-classification"),
        ("qa", "question-answering"),
        ("question_answering", "question-answering"),
        ("mlm", "masked-language-modeling"),
        ("masked_language_modeling", "masked-language-modeling"),
    ],
)
def test_aliases(alias, task):
    assert normalize_task(alias) == task


def test_every_task_has_a_model_class_and_outputs():
    assert set(AUTO_MODEL_CLASSES) == set(TASKS) == set(TASK_OUTPUTS)


def test_unknown_task_lists_valid_ones():
    with pytest.raises(SparseforgeError, match="valid tasks: text-classification"):
        normalize_task("summarization")
