"""Argument parsing: legacy flags, fp16 fallback, output-dir rules, recipe resolved early."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from sparseforge.errors import RecipeError, SparseforgeError
from sparseforge.transformers.arguments import (
    DataArguments,
    ModelArguments,
    RecipeArguments,
    check_output_dir,
    check_overwrite,
    new_output_dir_guard,
    parse_task_args,
    resolve_model_and_recipe,
    translate_legacy_flags,
    user_entries,
    write_output_manifest,
)
from sparseforge.transformers.trainer import CHECKPOINT_MARKER


def test_translate_legacy_flags():
    argv = [
        "--evaluation_strategy",
        "epoch",
        "--no_cuda",
        "--per_gpu_train_batch_size=4",
        "--fp16_backend",
        "amp",
        "--save_safetensors",
        "True",
        "--seed",
        "1",
    ]
    assert translate_legacy_flags(argv) == [
        "--eval_strategy",
        "epoch",
        "--use_cpu",
        "--per_device_train_batch_size=4",
        "--seed",
        "1",
    ]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (
            ["--group_by_length", "--seed", "1"],
            ["--train_sampling_strategy", "group_by_length", "--seed", "1"],
        ),
        (["--group_by_length", "True"], ["--train_sampling_strategy", "group_by_length"]),
        (["--group_by_length=false", "--seed", "1"], ["--seed", "1"]),
        (["--group_by_length", "false"], []),
    ],
)
def test_group_by_length_becomes_the_sampling_strategy(argv, expected, tmp_path):
    assert translate_legacy_flags(argv) == expected
    *_, training = parse_task_args(
        ["--model_name_or_path", "m", "--output_dir", str(tmp_path), *argv],
        ModelArguments,
        DataArguments,
    )
    assert training.train_sampling_strategy == (
        "group_by_length" if expected[:1] == ["--train_sampling_strategy"] else "random"
    )


def test_group_by_length_with_another_value_is_an_error():
    with pytest.raises(
        SparseforgeError, match="--group_by_length takes true or false, got 'yes please'"
    ):
        translate_legacy_flags(["--group_by_length=yes please"])


def test_parse_with_fp16_fallback(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        model, data, recipe, training = parse_task_args(
            [
                "--model_name_or_path",
                "m",
                "--output_dir",
                str(tmp_path),
                "--fp16",
                "--evaluation_strategy",
                "epoch",
                "--recipe",
                "r.yaml",
                "--one_shot",
            ],
            ModelArguments,
            DataArguments,
            RecipeArguments,
        )
    assert training.fp16 is False and training.eval_strategy == "epoch" and training.do_eval
    assert "--fp16 needs a CUDA GPU" in caplog.text
    assert recipe.recipe == "r.yaml" and recipe.one_shot and data.pad_to_max_length
    with pytest.raises(SparseforgeError, match="validation_ratio"):
        parse_task_args(
            [
                "--model_name_or_path",
                "m",
                "--output_dir",
                str(tmp_path),
                "--validation_ratio",
                "1.5",
            ],
            ModelArguments,
            DataArguments,
            RecipeArguments,
        )


def test_unknown_flags_and_sizes_below_one_are_one_line_errors(tmp_path):
    base = ["--model_name_or_path", "m", "--output_dir", str(tmp_path)]
    types = (ModelArguments, DataArguments, RecipeArguments)
    with pytest.raises(
        SparseforgeError,
        match=r"unknown argument --save_total_limt \(did you mean --save_total_limit\?\)",
    ):
        parse_task_args([*base, "--save_total_limt", "2"], *types, prog="sparseforge train ner")
    with pytest.raises(
        SparseforgeError, match="--per_device_eval_batch_size must be a positive integer, got 0"
    ):
        parse_task_args([*base, "--per_device_eval_batch_size", "0"], *types)
    with pytest.raises(
        SparseforgeError, match="--gradient_accumulation_steps must be a positive integer, got -1"
    ):
        parse_task_args([*base, "--gradient_accumulation_steps", "-1"], *types)
    config = tmp_path / "args.json"
    config.write_text(
        json.dumps({"model_name_or_path": "m", "output_dir": str(tmp_path), "recipie": "r.yaml"})
    )
    with pytest.raises(SparseforgeError, match="args.json.*recipie"):
        parse_task_args([str(config)], *types)


def _fake_checkpoint(folder: Path, step: int, *, marker: bool = True) -> None:
    """A checkpoint-N folder with what resuming reads: weights, trainer state, (the marker)."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if marker:
        files = ["model.safetensors", "trainer_state.json", CHECKPOINT_MARKER]
        (folder / CHECKPOINT_MARKER).write_text(
            json.dumps({"generator": "sparseforge", "step": step, "files": files})
        )


def test_check_output_dir(tmp_path):
    from transformers import TrainingArguments

    out = tmp_path / "out"
    args = TrainingArguments(output_dir=str(out), do_train=True)
    assert check_output_dir(args, RecipeArguments()) is None  # does not exist yet
    _fake_checkpoint(out / "checkpoint-3", 3)
    _fake_checkpoint(out / "checkpoint-7", 7)
    assert check_output_dir(args, RecipeArguments()).endswith("checkpoint-7")  # resume the last one
    assert check_output_dir(args, RecipeArguments(overwrite_output_dir=True)) is None
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    with pytest.raises(SparseforgeError, match="overwrite_output_dir"):
        check_output_dir(TrainingArguments(output_dir=str(other), do_train=True), RecipeArguments())
    # A recipe run resumes with its recipe state: a checkpoint without it is refused up front.
    with pytest.raises(SparseforgeError, match="manager_state.pt is missing"):
        check_output_dir(args, RecipeArguments(recipe="r.yaml"))
    # The user's own checkpoint-9 (no marker) is not resumed automatically.
    _fake_checkpoint(out / "checkpoint-9", 9, marker=False)
    with pytest.raises(
        SparseforgeError, match="holds checkpoint-9, which sparseforge did not write"
    ):
        check_output_dir(args, RecipeArguments())
    explicit = TrainingArguments(
        output_dir=str(out), do_train=True, resume_from_checkpoint=str(out / "checkpoint-9")
    )
    assert check_output_dir(explicit, RecipeArguments()) == str(out / "checkpoint-9")


def test_output_manifest_tells_the_users_files_from_the_runs(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    check_overwrite(out)  # a name the run does not write: no clash
    write_output_manifest(out, user_entries(out), finished=False)
    (out / "config.json").write_text("{}")  # written by the (crashed) run
    assert user_entries(out) == {"notes.txt"}
    check_overwrite(out)
    write_output_manifest(out, {"notes.txt"}, finished=True)
    (out / "vocab.txt").write_text("added by the user after the run")
    assert user_entries(out) == {"notes.txt", "vocab.txt"}
    with pytest.raises(SparseforgeError, match="holds vocab.txt, which sparseforge did not write"):
        check_overwrite(out)


def test_output_dir_guard_removes_only_new_folders(tmp_path):
    new = tmp_path / "new"
    with pytest.raises(SparseforgeError):
        with new_output_dir_guard(new):
            new.mkdir()
            raise SparseforgeError("bad input")
    assert not new.exists()
    old = tmp_path / "old"
    old.mkdir()
    with pytest.raises(SparseforgeError):
        with new_output_dir_guard(old):
            raise SparseforgeError("bad input")
    assert old.exists()


def test_resolve_model_and_recipe_fails_early(tmp_path):
    model = ModelArguments(model_name_or_path=str(tmp_path / "nowhere"))
    with pytest.raises(SparseforgeError, match="no such model folder"):
        resolve_model_and_recipe(model, RecipeArguments())
    model = ModelArguments(model_name_or_path=str(tmp_path))
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(
        "lr: 0.1\nmodifiers:\n  - !SetLearningRateModifier {learning_rate: eval(lr)}\n"
    )
    _, recipe = resolve_model_and_recipe(
        model, RecipeArguments(recipe=str(recipe_file), recipe_args="lr=0.5")
    )
    assert recipe.modifiers[0].learning_rate == 0.5
    with pytest.raises(RecipeError, match="which the recipe does not define"):
        resolve_model_and_recipe(
            model, RecipeArguments(recipe=str(recipe_file), recipe_args="lrr=0.5")
        )
    with pytest.raises(SparseforgeError, match="needs --recipe"):
        resolve_model_and_recipe(model, RecipeArguments(recipe_args="lr=0.5"))
