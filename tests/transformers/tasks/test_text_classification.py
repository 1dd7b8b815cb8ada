"""`sparseforge train text-classification` end to end on a tiny BERT and the fixture files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from sparseforge.cli import main
from sparseforge.recipe import Recipe
from sparseforge.transformers.tasks.text_classification import (
    TextClassificationDataArguments,
    input_columns,
    label_scheme,
)

DATA = Path(__file__).parents[2] / "fixtures" / "text_classification"

TRANSFER_RECIPE = """
num_epochs: 2
training_modifiers:
  - !EpochRangeModifier {start_epoch: 0.0, end_epoch: eval(num_epochs)}
  - !LearningRateFunctionModifier {start_epoch: 0.0, end_epoch: eval(num_epochs), lr_func: linear, init_lr: 0.002, final_lr: 0.0}
constant_modifiers:
  - !ConstantPruningModifier {start_epoch: 0.0, params: __ALL_PRUNABLE__}
distillation_modifiers:
  - !DistillationModifier {hardness: 0.5, temperature: 2.0, distill_output_keys: [logits]}
"""


def _common(model_dir: Path, out: Path, report_to: str = "none") -> list[str]:
    return [
        "train",
        "text-classification",
        "--model_name_or_path",
        str(model_dir),
        "--output_dir",
        str(out),
        "--per_device_train_batch_size",
        "8",
        "--per_device_eval_batch_size",
        "16",
        "--max_seq_length",
        "16",
        "--report_to",
        report_to,
        "--disable_tqdm",
        "true",
        "--save_strategy",
        "no",
        "--logging_steps",
        "2",
        "--seed",
        "1",
    ]


def _pruned_model(tiny_model_dir) -> Path:
    """A tiny model whose encoder weights are half zeros, as a sparse upstream checkpoint."""
    import transformers

    model_dir = tiny_model_dir("text-classification", name="sparse_start")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(model_dir))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("bert.encoder") and param.dim() == 2:
                param.masked_fill_(param.abs() < param.abs().median(), 0.0)
    model.save_pretrained(str(model_dir))
    return model_dir


def _recomputed_multilabel_f1(
    model_dir: Path, json_file: Path, max_length: int = 16
) -> tuple[float, float]:
    """Micro and macro F1 of the saved model (sigmoid > 0.3) on a JSON-lines file of text, labels,
    counted here label by label without the Trainer or sparseforge's metrics."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    rows = [json.loads(line) for line in json_file.read_text().splitlines() if line.strip()]
    batch = tokenizer(
        [row["text"] for row in rows],
        truncation=True,
        max_length=max_length,
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        predicted = (torch.sigmoid(model(**batch).logits) > 0.3).tolist()
    counts = []  # (true positives, false positives, false negatives) per label
    for label_id, name in sorted((int(i), name) for i, name in model.config.id2label.items()):
        truth = [str(name) in {str(label) for label in row["labels"]} for row in rows]
        pred = [p[label_id] for p in predicted]
        counts.append(
            (
                sum(t and p for t, p in zip(truth, pred, strict=True)),
                sum(p and not t for t, p in zip(truth, pred, strict=True)),
                sum(t and not p for t, p in zip(truth, pred, strict=True)),
            )
        )
    tp, fp, fn = (sum(c[k] for c in counts) for k in range(3))
    micro = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    macro = sum(2 * t / (2 * t + f + n) if t + f + n else 0.0 for t, f, n in counts) / len(counts)
    return micro, macro


def _recomputed_accuracy(model_dir: Path, csv_file: Path, max_length: int = 16) -> float:
    """Accuracy of the saved model on a CSV of sentence,label, computed here without the Trainer."""
    import csv

    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    with csv_file.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    batch = tokenizer(
        [row["sentence"] for row in rows],
        truncation=True,
        max_length=max_length,
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        predicted = model(**batch).logits.argmax(-1).tolist()
    labels = [model.config.label2id[row["label"]] for row in rows]
    return sum(p == y for p, y in zip(predicted, labels, strict=True)) / len(rows)


def _zeros(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {
        k: v == 0
        for k, v in load_file(str(folder / "model.safetensors")).items()
        if k.startswith("bert.encoder") and v.dim() == 2
    }


@pytest.mark.slow
def test_sparse_transfer_csv_with_distillation_keeps_sparsity(tmp_path, tiny_model_dir, capsys):
    model_dir = _pruned_model(tiny_model_dir)
    teacher = tiny_model_dir("text-classification", name="teacher", seed=3)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(TRANSFER_RECIPE)
    out = tmp_path / "out"
    # an unbalanced validation file (6 negative, 2 positive), so the reported accuracy tells
    # the label mapping apart (a one-class model scores 0.75 or 0.25, not 0.5 either way)
    lines = (DATA / "dev.csv").read_text().splitlines()
    dev = tmp_path / "dev.csv"
    dev.write_text(
        "\n".join(
            [
                lines[0],
                *[r for r in lines[1:] if r.endswith("negative")][:6],
                *[r for r in lines[1:] if r.endswith("positive")][:2],
            ]
        )
        + "\n"
    )
    code = main(
        _common(model_dir, out)
        + [
            "--train_file",
            str(DATA / "train.csv"),
            "--validation_file",
            str(dev),
            "--recipe",
            str(recipe),
            "--recipe_args",
            "num_epochs=3",
            "--distill_teacher",
            str(teacher),
            "--do_train",
            "--do_eval",
            "--evaluation_strategy",
            "epoch",
            "--num_train_epochs",
            "7",
            "--fp16",
        ]
    )
    assert code == 0
    for name in (
        "model.safetensors",
        "config.json",
        "recipe.yaml",
        "eval_results.json",
        "tokenizer_config.json",
    ):
        assert (out / name).is_file(), name
    results = json.loads((out / "eval_results.json").read_text())
    assert results["epoch"] == 3.0  # the recipe's epochs, with recipe_args
    assert results["eval_accuracy"] == pytest.approx(_recomputed_accuracy(out, dev))
    assert results["eval_samples"] == 8
    saved = Recipe.load(str(out / "recipe.yaml"))
    assert [m.name for m in saved.modifiers][-1] == "DistillationModifier" and saved.max_epochs == 3
    before, after = _zeros(model_dir), _zeros(out)
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(before[name], after[name]), name  # the same zeros, none more, none less
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    state = json.loads((out / "trainer_state.json").read_text())
    assert any("distillation/teacher_loss" in entry for entry in state["log_history"])


@pytest.mark.slow
def test_report_to_tensorboard_writes_sparsity_and_distillation_scalars(tmp_path, tiny_model_dir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(TRANSFER_RECIPE)
    out = tmp_path / "out"
    args = _common(_pruned_model(tiny_model_dir), out, report_to="tensorboard") + [
        "--train_file",
        str(DATA / "train.csv"),
        "--recipe",
        str(recipe),
        "--recipe_args",
        "num_epochs=1",
        "--distill_teacher",
        "self",
        "--do_train",
        "--logging_steps",
        "1",
    ]
    assert main(args) == 0
    (event_dir,) = {path.parent for path in (out / "runs").rglob("events.out.tfevents.*")}
    events = EventAccumulator(str(event_dir)).Reload()
    tags = events.Tags()["scalars"]
    assert {
        "train/sparsity/total",
        "train/distillation/teacher_loss",
        "train/learning_rate",
    } <= set(tags), tags
    sparsity = events.Scalars("train/sparsity/total")
    # Half of each encoder matrix is zero (the rest of __ALL_PRUNABLE__ is dense), and it is held.
    assert len(sparsity) == 4 and 0.2 < sparsity[0].value < 0.5
    assert all(event.value == sparsity[0].value for event in sparsity)


def test_report_to_a_missing_integration_fails_before_training(
    tmp_path, tiny_model_dir, capsys, monkeypatch
):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name.startswith("tensorboard") else real_find_spec(name, *a),
    )
    out = tmp_path / "out"
    args = _common(tiny_model_dir(), out, report_to="tensorboard") + [
        "--train_file",
        str(DATA / "train.csv"),
        "--do_train",
    ]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--report_to tensorboard needs the tensorboard package" in err[0], err
    assert "sparseforge[tensorboard]" in err[0] and not out.exists()


def test_pairs_from_json_lines_with_legacy_flags(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    code = main(
        _common(tiny_model_dir(), out)
        + [
            "--train_file",
            str(DATA / "pairs_train.json"),
            "--validation_file",
            str(DATA / "pairs_dev.json"),
            "--input_column_names",
            "premise,hypothesis",
            "--max_train_samples",
            "16",
            "--max_eval_samples",
            "5",
            "--do_train",
            "--do_eval",
            "--num_train_epochs",
            "1",
            "--no_cuda",
            "--pad_to_max_length",
            "false",
        ]
    )
    assert code == 0
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2  # 16 examples / batch 8
    assert json.loads((out / "all_results.json").read_text())["eval_samples"] == 5
    assert not (out / "recipe.yaml").exists()  # no recipe, nothing to record


def test_multi_label_reports_micro_and_macro_f1(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    code = main(
        _common(tiny_model_dir(), out)
        + [
            "--train_file",
            str(DATA / "multilabel_train.json"),
            "--validation_file",
            str(DATA / "multilabel_dev.json"),
            "--label_column_name",
            "labels",
            "--do_train",
            "--do_eval",
            "--num_train_epochs",
            "1",
        ]
    )
    assert code == 0
    results = json.loads((out / "eval_results.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification" and len(config["id2label"]) == 3
    micro, macro = _recomputed_multilabel_f1(out, DATA / "multilabel_dev.json")
    assert results["eval_f1_micro"] == pytest.approx(micro) and results[
        "eval_f1_macro"
    ] == pytest.approx(macro)


@pytest.mark.slow
def test_glue_tsv_with_task_name_and_predictions(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    code = main(
        _common(tiny_model_dir(), out)
        + [
            "--task_name",
            "sst2",
            "--train_file",
            str(DATA / "sst2_train.tsv"),
            "--validation_ratio",
            "0.25",
            "--test_file",
            str(DATA / "sst2_dev.tsv"),
            "--do_train",
            "--do_eval",
            "--do_predict",
            "--num_train_epochs",
            "1",
        ]
    )
    assert code == 0
    results = json.loads((out / "eval_results.json").read_text())
    assert json.loads((out / "all_results.json").read_text())["eval_samples"] == 8
    # accuracy over the 8 held-out examples: a whole number of them right
    assert results["eval_accuracy"] * 8 == pytest.approx(round(results["eval_accuracy"] * 8))
    lines = (out / "predict_results.txt").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 13
    assert {line.split("\t")[1] for line in lines[1:]} <= {"negative", "positive"}


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--input_column_names", "nope"], "no column 'nope'"),
        (["--task_name", "sst3"], "unknown --task_name 'sst3'"),
        (["--train_file", "BROKEN"], "cannot read --train_file"),
        (["--train_file", "MISSING"], "does not exist"),
        (["--recipe", "BADRECIPE"], "did you mean 'final_sparsity'"),
        (["--distill_teacher", "QA_TEACHER"], "same head"),
        (["NO_TOKENIZER"], "has no tokenizer: none of tokenizer.json, vocab.txt"),
        (["TRUNCATED_WEIGHTS"], "model.safetensors is damaged (truncated"),
        (
            [
                "--train_file",
                "REGRESSION",
                "--task_name",
                "stsb",
                "--input_column_names",
                "sentence",
            ],
            "example 2, column 'label': label 'abc' is not a number",
        ),
        (["--train_file", "EMPTY_LABEL"], "example 2, column 'label': the label is empty"),
        (
            ["--test_file", "UNSEEN", "--do_predict"],
            "example 1, column 'label': label 'weird' is not one of the training and validation data's labels (negative, positive)",
        ),
        (
            ["--per_device_train_batch_size", "0"],
            "--per_device_train_batch_size must be a positive integer, got 0",
        ),
        (["--bogus_flag", "1"], "unknown argument --bogus_flag"),
        (["--save_total_limt", "1"], "did you mean --save_total_limit?"),
    ],
)
def test_bad_inputs_fail_before_training_and_leave_nothing(
    tmp_path, tiny_model_dir, capsys, extra, message
):
    model_dir = tiny_model_dir()
    broken = tmp_path / "broken.csv"
    broken.write_bytes(b'sentence,label\n"unterminated,1\n\x00\xff,\n"a","b","c"\n')
    bad_recipe = tmp_path / "bad.yaml"
    bad_recipe.write_text(
        "modifiers:\n  - !GMPruningModifier {params: __ALL_PRUNABLE__, final_sparsty: 0.5, start_epoch: 0, end_epoch: 1}\n"
    )
    (tmp_path / "regression.csv").write_text("sentence,label\nthe movie,0.5\na film,abc\n")
    (tmp_path / "empty_label.csv").write_text(
        "sentence,label\nthe movie,positive\na film,\nbad,negative\n"
    )
    (tmp_path / "unseen.csv").write_text("sentence,label\nthe movie,weird\n")
    if "NO_TOKENIZER" in extra:
        for path in model_dir.iterdir():
            if path.name.startswith(("tokenizer", "vocab", "special_tokens")):
                path.unlink()
    if "TRUNCATED_WEIGHTS" in extra:
        weights = model_dir / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:2000])
    extra = [item for item in extra if item not in ("NO_TOKENIZER", "TRUNCATED_WEIGHTS")]
    replacements = {
        "REGRESSION": str(tmp_path / "regression.csv"),
        "EMPTY_LABEL": str(tmp_path / "empty_label.csv"),
        "UNSEEN": str(tmp_path / "unseen.csv"),
        "BROKEN": str(broken),
        "MISSING": str(tmp_path / "missing.csv"),
        "BADRECIPE": str(bad_recipe),
        "QA_TEACHER": str(tiny_model_dir("question-answering")) if "QA_TEACHER" in extra else "",
    }
    extra = [replacements.get(item, item) for item in extra]
    files = [] if "--train_file" in extra else ["--train_file", str(DATA / "train.csv")]
    out = tmp_path / "out"
    capsys.readouterr()
    code = main(
        _common(model_dir, out)
        + files
        + ["--validation_file", str(DATA / "dev.csv"), "--do_train", "--do_eval"]
        + extra
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("sparseforge train: error:") and message in err[0], (
        err
    )
    assert not out.exists()


def test_existing_output_dir_needs_overwrite(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "something.txt").write_text("x")
    args = _common(tiny_model_dir(), out) + ["--train_file", str(DATA / "train.csv"), "--do_train"]
    assert main(args) == 2
    assert "--overwrite_output_dir" in capsys.readouterr().err
    assert (out / "something.txt").exists()


def test_label_scheme_and_input_columns():
    import datasets

    raw = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"idx": [0, 1, 2], "text": ["a", "b", "c"], "label": ["neg", "pos", "neg"]}
            ),
            "validation": datasets.Dataset.from_dict({"idx": [0], "text": ["d"], "label": ["mid"]}),
        }
    )
    args = TextClassificationDataArguments()
    scheme = label_scheme(raw, args)
    assert scheme.names == ["mid", "neg", "pos"] and scheme.encode("pos") == 2
    assert input_columns(args, raw["train"].column_names) == ("text", None)
    regression = datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"label": [0.5, 1.0, 3.25]})}
    )
    assert label_scheme(regression, args).problem_type == "regression"
    multi = datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"label": ["[0, 2]", "1", "2,0"]})}
    )
    scheme = label_scheme(multi, args)
    assert scheme.problem_type == "multi_label_classification" and scheme.encode("2,0") == [
        1.0,
        0.0,
        1.0,
    ]
    glue = TextClassificationDataArguments(task_name="rte")
    glue.check()
    rte = datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"label": ["entailment", "not_entailment"]})}
    )
    assert label_scheme(rte, glue).encode("not_entailment") == 1
    assert input_columns(glue, []) == ("sentence1", "sentence2")


@pytest.mark.slow
def test_one_shot_then_onnx_export(tmp_path, tiny_model_dir):
    recipe = tmp_path / "gmp.yaml"
    recipe.write_text(
        "modifiers:\n  - !GMPruningModifier {params: ['re:bert.encoder.layer.*.intermediate.dense.weight'], "
        "start_epoch: 0.0, end_epoch: 4.0, init_sparsity: 0.1, final_sparsity: 0.75, update_frequency: 1.0}\n"
    )
    out, onnx_dir = tmp_path / "out", tmp_path / "onnx"
    code = main(
        _common(tiny_model_dir(), out)
        + [
            "--train_file",
            str(DATA / "train.csv"),
            "--do_train",
            "--recipe",
            str(recipe),
            "--one_shot",
            "--onnx_export_path",
            str(onnx_dir),
        ]
    )
    assert code == 0
    from safetensors.torch import load_file

    weights = load_file(str(out / "model.safetensors"))
    for layer in (0, 1):
        weight = weights[f"bert.encoder.layer.{layer}.intermediate.dense.weight"]
        assert (weight == 0).float().mean().item() == pytest.approx(
            0.75, abs=1e-3
        )  # the recipe's end state
    assert (onnx_dir / "model.onnx").is_file() and (onnx_dir / "recipe.yaml").is_file()


def test_one_shot_obs_takes_gradients_from_train_file_without_do_train(
    tmp_path, tiny_model_dir, capsys
):
    recipe = tmp_path / "obs.yaml"
    recipe.write_text(
        "modifiers:\n  - !OBSPruningModifier {params: ['re:bert.encoder.layer.*.intermediate.dense.weight'], "
        "start_epoch: 0.0, end_epoch: 1.0, init_sparsity: 0.1, final_sparsity: 0.5, update_frequency: 0.5, "
        "num_grads: 4, fisher_block_size: 8, global_sparsity: false}\n"
    )
    model_dir = tiny_model_dir()
    out = tmp_path / "out"
    code = main(
        _common(model_dir, out)
        + ["--train_file", str(DATA / "train.csv"), "--recipe", str(recipe), "--one_shot"]
    )
    assert code == 0
    from safetensors.torch import load_file

    weight = load_file(str(out / "model.safetensors"))[
        "bert.encoder.layer.0.intermediate.dense.weight"
    ]
    assert (weight == 0).float().mean().item() == pytest.approx(0.5, abs=1e-3)

    # No training data at all: one line that says what to pass, and no output folder.
    capsys.readouterr()
    code = main(
        _common(model_dir, tmp_path / "none")
        + ["--validation_file", str(DATA / "dev.csv"), "--recipe", str(recipe), "--one_shot"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        code == 2
        and len(err) == 1
        and "OBSPruningModifier needs training batches" in err[0]
        and "--train_file" in err[0]
    ), err
    assert not (tmp_path / "none").exists()


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sparseforge train: error:"), err
    return err[0]


@pytest.mark.slow
def test_onnx_export_path_never_deletes_a_users_folder(tmp_path, tiny_model_dir, capsys):
    model_dir = tiny_model_dir()
    user = tmp_path / "my_folder"
    user.mkdir()
    (user / "thesis.txt").write_text("three years of work")
    model_before, user_before = _tree(model_dir), _tree(user)
    train = ["--train_file", str(DATA / "train.csv"), "--do_train", "--num_train_epochs", "1"]
    for target in (user, model_dir):
        out = tmp_path / f"out_{target.name}"
        capsys.readouterr()
        assert main(_common(model_dir, out) + train + ["--onnx_export_path", str(target)]) == 2
        line = _one_line_error(capsys)
        assert (
            f"--onnx_export_path {target}" in line and "not a sparseforge deployment folder" in line
        ), line
        assert not out.exists()  # refused before training
    assert _tree(user) == user_before and _tree(model_dir) == model_before
    # Into the training's own output folder: refused too.
    out = tmp_path / "out"
    assert main(_common(model_dir, out) + train + ["--onnx_export_path", str(out)]) == 2
    assert "would replace the model folder" in _one_line_error(capsys)
    # An empty folder, then the same folder again (now a previous deployment): both export.
    empty = tmp_path / "deploy"
    empty.mkdir()
    assert main(_common(model_dir, out) + train + ["--onnx_export_path", str(empty)]) == 0
    assert (empty / "model.onnx").is_file()
    assert (
        main(
            _common(model_dir, out)
            + train
            + ["--onnx_export_path", str(empty), "--overwrite_output_dir"]
        )
        == 0
    )


@pytest.mark.slow
def test_overwrite_output_dir_replaces_only_what_sparseforge_wrote(
    tmp_path, tiny_model_dir, capsys
):
    model_dir = tiny_model_dir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text('{"mine": true}')
    (out / "checkpoint-5").mkdir()
    (out / "checkpoint-5" / "notes.txt").write_text("mine")
    before = _tree(out)
    args = _common(model_dir, out) + [
        "--train_file",
        str(DATA / "train.csv"),
        "--do_train",
        "--num_train_epochs",
        "1",
        "--overwrite_output_dir",
    ]
    capsys.readouterr()
    assert main(args) == 2
    line = _one_line_error(capsys)
    assert "checkpoint-5, config.json" in line and "did not write" in line, line
    assert _tree(out) == before
    # The user's unrelated files stay; the run's own files are replaced by the next run.
    (out / "config.json").unlink()
    shutil.rmtree(out / "checkpoint-5")
    (out / "notes.txt").write_text("mine")
    assert main(args) == 0
    first = json.loads((out / "trainer_state.json").read_text())
    assert main(args + ["--seed", "2"]) == 0
    assert json.loads((out / "trainer_state.json").read_text()) != first
    assert (out / "notes.txt").read_text() == "mine"


def test_output_dir_problems_are_one_line_errors_before_training(
    tmp_path, tiny_model_dir, capsys, monkeypatch
):
    model_dir = tiny_model_dir()
    train = ["--train_file", str(DATA / "train.csv"), "--do_train"]
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    capsys.readouterr()
    assert main(_common(model_dir, a_file) + train) == 2
    assert f"--output_dir {a_file} is a file" in _one_line_error(capsys)
    assert a_file.read_text() == "x"
    # A user's own checkpoint-5 (a Trainer checkpoint, but not sparseforge's): not auto-resumed.
    users = tmp_path / "users"
    (users / "checkpoint-5").mkdir(parents=True)
    (users / "checkpoint-5" / "trainer_state.json").write_text('{"global_step": 5}')
    assert main(_common(model_dir, users) + train) == 2
    line = _one_line_error(capsys)
    assert (
        "holds checkpoint-5, which sparseforge did not write" in line
        and "--resume_from_checkpoint" in line
    )
    # A folder this process may not write into (root ignores chmod, so the check is simulated).
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os,
        "access",
        lambda path, mode, **kw: False if Path(path) == locked else real_access(path, mode, **kw),
    )
    assert main(_common(model_dir, locked / "out") + train) == 2
    assert f"cannot write into {locked}" in _one_line_error(capsys)


@pytest.mark.slow
def test_resuming_a_damaged_checkpoint_is_a_one_line_error(tmp_path, tiny_model_dir, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        TRANSFER_RECIPE.replace(
            "distillation_modifiers:\n  - !DistillationModifier {hardness: 0.5, temperature: 2.0, distill_output_keys: [logits]}\n",
            "",
        )
    )
    out = tmp_path / "out"
    args = _common(tiny_model_dir(), out) + [
        "--train_file",
        str(DATA / "train.csv"),
        "--do_train",
        "--recipe",
        str(recipe),
        "--recipe_args",
        "num_epochs=1",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--max_steps",
        "2",
    ]
    assert main(args) == 0
    checkpoint = out / "checkpoint-2"
    (checkpoint / "manager_state.pt").unlink()
    capsys.readouterr()
    assert main(args) == 2  # auto-resume: the marker lists manager_state.pt, so it is known missing
    line = _one_line_error(capsys)
    assert "manager_state.pt is missing" in line and str(checkpoint) in line, line


QAT_LINEARS = """training_modifiers:
  - !EpochRangeModifier {start_epoch: 0.0, end_epoch: 1.0}
quantization_modifiers:
  - !QuantizationModifier
      start_epoch: 0.0
      scheme: W8A8
      ignore: [Embedding, QATMatMul]
"""


@pytest.mark.slow
def test_save_compressed_writes_a_folder_plain_transformers_loads(tmp_path, tiny_model_dir, capsys):
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from sparseforge.transformers.loading import load_model

    model_dir = tiny_model_dir()
    train = ["--train_file", str(DATA / "train.csv"), "--do_train", "--num_train_epochs", "1"]
    # A recipe that does not quantize cannot give a smaller compressed-tensors model: refused
    # before training, nothing written.
    dense = tmp_path / "dense.yaml"
    dense.write_text(QAT_LINEARS.split("quantization_modifiers")[0])
    refused = tmp_path / "refused"
    args = _common(model_dir, refused) + train + ["--recipe", str(dense), "--save_compressed"]
    capsys.readouterr()
    assert main(args) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the model's loading bars
    assert last.startswith("sparseforge train: error:") and "needs a quantized model" in last
    assert not refused.exists()

    recipe = tmp_path / "qat.yaml"
    recipe.write_text(QAT_LINEARS)
    out = tmp_path / "out"
    args = _common(model_dir, out) + train + ["--recipe", str(recipe), "--save_compressed"]
    assert main(args) == 0
    compressed = out / "compressed"
    config = json.loads((compressed / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    theirs_model = AutoModelForSequenceClassification.from_pretrained(str(compressed)).eval()
    ours_model = load_model(out, "text-classification")
    tokenizer = AutoTokenizer.from_pretrained(str(compressed))
    batch = tokenizer(
        ["a good film", "the worst plot", "fine acting"], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        theirs, ours = theirs_model(**batch).logits, ours_model(**batch).logits
    # The same int8 model: equal up to a rounding tie (torch's x * (1/s) vs compressed-tensors' x / s).
    assert torch.allclose(theirs, ours, atol=0.05), (theirs, ours)
    assert ours_model.bert.encoder.layer[0].output.dense.weight_fake_quant is not None


def test_save_compressed_never_writes_into_a_users_compressed_folder(
    tmp_path, tiny_model_dir, capsys
):
    model_dir = tiny_model_dir()
    out = tmp_path / "out"
    (out / "compressed").mkdir(parents=True)
    (out / "compressed" / "notes.txt").write_text("mine")
    recipe = tmp_path / "qat.yaml"
    recipe.write_text(QAT_LINEARS)
    train = ["--train_file", str(DATA / "train.csv"), "--do_train", "--num_train_epochs", "1"]
    args = _common(model_dir, out) + train + ["--recipe", str(recipe), "--save_compressed"]
    capsys.readouterr()
    assert main(args + ["--overwrite_output_dir"]) == 2
    line = _one_line_error(capsys)
    assert "holds compressed, which sparseforge did not write" in line, line
    assert [p.name for p in out.iterdir()] == ["compressed"]
    assert (out / "compressed" / "notes.txt").read_text() == "mine"
