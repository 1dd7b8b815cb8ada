"""`sparseforge train TASK`: task names, SparseML aliases and the task-module contract."""

from __future__ import annotations

import sys
import types

import pytest

from sparseforge.cli import main
from sparseforge.transformers import cli as train_cli


def test_help_and_unknown_task(capsys):
    assert main(["train", "--help"]) == 0
    assert "text-classification" in capsys.readouterr().out
    assert main(["train", "sentence-embedding"]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'sentence-embedding'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "alias",
    [
        "text_classification",
        "glue",
        "sentiment_analysis",
        "sequence_classification",
        "text-classification",
    ],
)
def test_sparseml_aliases_reach_the_task_module(monkeypatch, alias):
    seen = {}
    fake = types.ModuleType("fake_task")
    fake.main = lambda argv: seen.setdefault("argv", list(argv)) and 0
    monkeypatch.setitem(sys.modules, "fake_task", fake)
    monkeypatch.setitem(train_cli.TASK_MODULES, "text-classification", "fake_task")
    assert main(["train", alias, "--x", "1"]) == 0
    assert seen["argv"] == ["--x", "1"]


def test_missing_task_module_is_a_one_line_error(monkeypatch, capsys):
    monkeypatch.setitem(
        train_cli.TASK_MODULES, "question-answering", "sparseforge.transformers.tasks.not_written"
    )
    assert main(["train", "qa"]) == 2
    assert "task 'question-answering' is not available" in capsys.readouterr().err
