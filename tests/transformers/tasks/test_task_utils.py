"""The shared runner's contract: `build(args) -> TaskRun` of each task, split checks, the edge."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from transformers import EvalPrediction

from sparseforge.errors import DataError, ModelMatchError, SparseforgeError
from sparseforge.transformers.tasks import task_utils
from sparseforge.transformers.tasks import text_classification as tc
from sparseforge.transformers.tasks import token_classification as ner

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
TEXT = FIXTURES / "text_classification"
CONLL = FIXTURES / "conll"

RECIPE = """
training_modifiers:
  - !EpochRangeModifier {start_epoch: 0.0, end_epoch: 3.0}
"""


def _flags(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path",
        str(model_dir),
        "--output_dir",
        str(out),
        "--max_seq_length",
        "16",
        "--report_to",
        "none",
        "--save_strategy",
        "no",
        *extra,
    ]


def _text_args(model_dir: Path, out: Path, *extra: str) -> task_utils.TaskArgs:
    return task_utils.parse_args(
        _flags(model_dir, out, *extra), tc.TASK, tc.TextClassificationDataArguments
    )


def test_text_classification_task_run(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir("text-classification")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    args = _text_args(
        model_dir,
        tmp_path / "out",
        "--train_file",
        str(TEXT / "train.csv"),
        "--validation_file",
        str(TEXT / "dev.csv"),
        "--test_file",
        str(TEXT / "dev.csv"),
        "--do_train",
        "--do_eval",
        "--do_predict",
        "--recipe",
        str(recipe),
    )
    run = tc.build(args)
    assert isinstance(run, task_utils.TaskRun)
    assert (len(run.train_dataset), len(run.eval_dataset), len(run.predict_dataset)) == (32, 12, 12)
    assert (
        run.trainer.train_dataset is run.train_dataset
        and run.trainer.eval_dataset is run.eval_dataset
    )
    assert (
        "labels" not in run.predict_dataset.column_names
    )  # the test split is predicted, not scored
    assert run.sequence_length == 16 and run.extra_eval == {} and run.predict is not None
    # what the runner drives is on the TaskRun, not stuck onto the trainer
    assert not any(
        hasattr(run.trainer, name)
        for name in ("predict_fn", "sequence_length", "predict_dataset", "label_scheme")
    )
    assert (
        run.trainer.manager is not None and run.trainer.args.num_train_epochs == 3.0
    )  # the recipe, loaded at the edge
    labels = np.array([0, 1, 1, 0])
    right = np.eye(2)[labels]
    metrics = run.compute_metrics(EvalPrediction(predictions=right, label_ids=labels))
    assert set(metrics) == {"accuracy", "predicted_classes"} and metrics["accuracy"] == 1.0
    half = run.compute_metrics(
        EvalPrediction(predictions=np.eye(2)[[0, 0, 0, 0]], label_ids=labels)
    )
    assert half["accuracy"] == 0.5 and half["predicted_classes"] == 1.0


def test_only_the_splits_the_run_uses_are_built(tiny_model_dir, tmp_path):
    args = _text_args(
        tiny_model_dir("text-classification"),
        tmp_path / "out",
        "--train_file",
        str(TEXT / "train.csv"),
        "--validation_ratio",
        "0.25",
        "--do_eval",
    )
    run = tc.build(args)
    # the hold-out is taken from train (32 rows) even though only evaluation runs
    assert run.train_dataset is None and len(run.eval_dataset) == 8 and run.predict_dataset is None


def test_token_classification_task_run(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir("token-classification")
    args = task_utils.parse_args(
        _flags(
            model_dir,
            tmp_path / "out",
            "--train_file",
            str(CONLL / "train.txt"),
            "--validation_file",
            str(CONLL / "dev.txt"),
            "--test_file",
            str(CONLL / "dev.txt"),
            "--do_train",
            "--do_eval",
            "--do_predict",
            "--max_eval_samples",
            "1",
        ),
        ner.TASK,
        ner.TokenClassificationDataArguments,
    )
    run = ner.build(args)
    assert (len(run.train_dataset), len(run.eval_dataset), len(run.predict_dataset)) == (5, 1, 2)
    assert run.sequence_length == 16 and run.predict is not None
    id_to_label = run.trainer.model.config.id2label
    assert sorted(id_to_label.values()) == [
        "B-LOC",
        "B-ORG",
        "B-PER",
        "I-LOC",
        "I-ORG",
        "I-PER",
        "O",
    ]
    label_of = {name: i for i, name in id_to_label.items()}
    gold = np.array([[-100, label_of["B-PER"], label_of["I-PER"], label_of["O"], -100]])
    logits = np.eye(len(id_to_label))[np.where(gold < 0, 0, gold)]
    metrics = run.compute_metrics(EvalPrediction(predictions=logits, label_ids=gold))
    assert {"accuracy", "precision", "recall", "f1", "predicted_classes"} <= set(metrics)
    assert metrics["accuracy"] == 1.0 and metrics["f1"] == 1.0


def test_split_checks_are_the_same_for_every_task(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir("text-classification")
    with pytest.raises(DataError, match="--do_predict needs --test_file"):
        tc.build(
            _text_args(
                model_dir,
                tmp_path / "a",
                "--train_file",
                str(TEXT / "train.csv"),
                "--do_train",
                "--do_predict",
            )
        )
    with pytest.raises(
        DataError,
        match=r"--do_train needs training data \(--train_file, --dataset_name or --task_name\)",
    ):
        tc.build(
            _text_args(
                model_dir, tmp_path / "b", "--validation_file", str(TEXT / "dev.csv"), "--do_train"
            )
        )
    ner_args = task_utils.parse_args(
        _flags(
            tiny_model_dir("token-classification"),
            tmp_path / "c",
            "--validation_file",
            str(CONLL / "dev.txt"),
            "--do_train",
        ),
        ner.TASK,
        ner.TokenClassificationDataArguments,
    )
    with pytest.raises(
        DataError, match=r"--do_train needs training data \(--train_file or --dataset_name\)"
    ):
        ner.build(ner_args)


def test_the_edge_checks_the_teacher_and_recipe_args_before_data(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir("text-classification")
    qa_teacher = tiny_model_dir("question-answering")
    missing = str(tmp_path / "missing.csv")  # never read: the teacher is refused first
    with pytest.raises(ModelMatchError, match="same head"):
        _text_args(
            model_dir,
            tmp_path / "o",
            "--train_file",
            missing,
            "--do_train",
            "--distill_teacher",
            str(qa_teacher),
        )
    with pytest.raises(SparseforgeError, match="--recipe_args needs --recipe"):
        _text_args(model_dir, tmp_path / "o", "--train_file", missing, "--recipe_args", "x=1")
    args = _text_args(model_dir, tmp_path / "o", "--distill_teacher", "disable")
    assert args.teacher is None and args.model_path == str(model_dir) and args.recipe is None
    assert _text_args(model_dir, tmp_path / "o", "--distill_teacher", "self").teacher == "self"
