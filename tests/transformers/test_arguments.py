"""Argument parsing: legacy flags, fp16 fallback, output-dir rules, recipe resolved early."""

from __future__ import annotations

import logging

import pytest

from sparseforge.errors import RecipeError, SparseforgeError
from sparseforge.transformers.arguments import (
    DataArguments,
    ModelArguments,
    RecipeArguments,
    check_output_dir,
    new_output_dir_guard,
    parse_task_args,
    resolve_model_and_recipe,
    translate_legacy_flags,
)


def test_translate_legacy_flags():
    argv = ["--evaluation_strategy", "epoch", "--no_cuda", "--per_gpu_train_batch_size=4", "--fp16_backend", "amp", "--save_safetensors", "True", "--seed", "1"]
    assert translate_legacy_flags(argv) == ["--eval_strategy", "epoch", "--use_cpu", "--per_device_train_batch_size=4", "--seed", "1"]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--group_by_length", "--seed", "1"], ["--train_sampling_strategy", "group_by_length", "--seed", "1"]),
        (["--group_by_length", "True"], ["--train_sampling_strategy", "group_by_length"]),
        (["--group_by_length=false", "--seed", "1"], ["--seed", "1"]),
        (["--group_by_length", "false"], []),
    ],
)
def test_group_by_length_becomes_the_sampling_strategy(argv, expected, tmp_path):
    assert translate_legacy_flags(argv) == expected
    *_, training = parse_task_args(
        ["--model_name_or_path", "m", "--output_dir", str(tmp_path), *argv], ModelArguments, DataArguments
    )
    assert training.train_sampling_strategy == ("group_by_length" if expected[:1] == ["--train_sampling_strategy"] else "random")


def test_group_by_length_with_another_value_is_an_error():
    with pytest.raises(SparseforgeError, match="--group_by_length takes true or false, got 'yes please'"):
        translate_legacy_flags(["--group_by_length=yes please"])


def test_parse_with_fp16_fallback(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        model, data, recipe, training = parse_task_args(
            ["--model_name_or_path", "m", "--output_dir", str(tmp_path), "--fp16", "--evaluation_strategy", "epoch", "--recipe", "r.yaml", "--one_shot"],
            ModelArguments, DataArguments, RecipeArguments,
        )
    assert training.fp16 is False and training.eval_strategy == "epoch" and training.do_eval
    assert "--fp16 needs a CUDA GPU" in caplog.text
    assert recipe.recipe == "r.yaml" and recipe.one_shot and data.pad_to_max_length
    with pytest.raises(SparseforgeError, match="validation_ratio"):
        parse_task_args(["--model_name_or_path", "m", "--output_dir", str(tmp_path), "--validation_ratio", "1.5"], ModelArguments, DataArguments, RecipeArguments)


def test_check_output_dir(tmp_path):
    from transformers import TrainingArguments

    out = tmp_path / "out"
    args = TrainingArguments(output_dir=str(out), do_train=True)
    assert check_output_dir(args, RecipeArguments()) is None  # does not exist yet
    out.mkdir()
    (out / "checkpoint-3").mkdir()
    (out / "checkpoint-3" / "trainer_state.json").write_text("{}")
    (out / "checkpoint-7").mkdir()
    (out / "checkpoint-7" / "trainer_state.json").write_text("{}")
    assert check_output_dir(args, RecipeArguments()).endswith("checkpoint-7")  # resume the last one
    assert check_output_dir(args, RecipeArguments(overwrite_output_dir=True)) is None
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    with pytest.raises(SparseforgeError, match="overwrite_output_dir"):
        check_output_dir(TrainingArguments(output_dir=str(other), do_train=True), RecipeArguments())


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
    recipe_file.write_text("lr: 0.1\nmodifiers:\n  - !SetLearningRateModifier {learning_rate: eval(lr)}\n")
    _, recipe = resolve_model_and_recipe(model, RecipeArguments(recipe=str(recipe_file), recipe_args="lr=0.5"))
    assert recipe.modifiers[0].learning_rate == 0.5
    with pytest.raises(RecipeError, match="which the recipe does not define"):
        resolve_model_and_recipe(model, RecipeArguments(recipe=str(recipe_file), recipe_args="lrr=0.5"))
    with pytest.raises(SparseforgeError, match="needs --recipe"):
        resolve_model_and_recipe(model, RecipeArguments(recipe_args="lr=0.5"))
