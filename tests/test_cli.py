"""`sparseforge recipe check` and the dispatcher's one-line errors."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
from hang import HANG_SECONDS

from sparseforge.cli import main

RECIPES = Path(__file__).parent / "fixtures" / "recipes"


def test_recipe_check_prints_modifiers_and_schedule(capsys):
    assert main(["recipe", "check", str(RECIPES / "seed_style.md"), "--steps_per_epoch", "10"]) == 0
    out = capsys.readouterr().out
    assert "valid recipe, 4 modifier(s), max_epochs 40" in out
    assert "LearningRateFunctionModifier(start_epoch=30.0, end_epoch=40.0" in out
    table = out.split("schedule (steps_per_epoch=10):")[1].splitlines()
    header, rows = table[1], table[2:]
    assert header.split()[:2] == ["epoch", "lr"]
    by_epoch = {row.split()[0]: row.split() for row in rows if row.strip()}
    assert by_epoch["0"][1] == "5e-05" and by_epoch["30"][1] == "5e-05" and by_epoch["40"][1] == "0"
    assert "LearningRateFunctionModifier ends" in " ".join(by_epoch["30"])


def test_recipe_check_applies_recipe_args_and_prints_yaml(capsys):
    args = [
        "recipe",
        "check",
        str(RECIPES / "transfer_style.yaml"),
        "--recipe_args",
        "num_epochs=20",
        "--yaml",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "max_epochs 20" in out and "end_epoch: 20.0" in out


def _check_error(tmp_path, capsys, text):
    """`recipe check` of a bad recipe: exit 2 and exactly one line on stderr; returns (file, line)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    assert main(["recipe", "check", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return bad, err


def test_recipe_check_error_is_one_line_with_location(tmp_path, capsys):
    text = "training_modifiers:\n  - !SetLearningRateModifier\n    learning_rat: 0.1\n"
    bad, err = _check_error(tmp_path, capsys, text)
    assert f"{bad}:3: modifier SetLearningRateModifier, field 'learning_rat': unknown field" in err


@pytest.mark.slow
def test_unknown_command_and_console_script():
    assert main(["frobnicate"]) == 2
    result = subprocess.run(
        [sys.executable, "-m", "sparseforge.cli", "recipe", "check", str(RECIPES / "staged.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # stages hold absolute epochs (issue 18.1): finetune_stage is not moved after dense_stage
    assert "stage finetune_stage: epochs 0 -> 3" in result.stdout


def test_recipe_check_names_a_fractional_end(tmp_path, capsys):
    recipe = tmp_path / "short.yaml"
    recipe.write_text(
        "training_modifiers:\n  - !EpochRangeModifier {start_epoch: 0.0, end_epoch: 1.5}\n"
    )
    assert main(["recipe", "check", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "valid recipe, 1 modifier(s), max_epochs 2 (ends at epoch 1.5)" in out
    rows = [line.split()[0] for line in out.split("schedule (")[1].splitlines()[2:] if line.strip()]
    assert rows == ["0", "1", "1.5"]  # no row past the recipe's end


def test_recipe_check_yaml_syntax_error_is_one_line_with_line_and_column(tmp_path, capsys):
    text = "training_modifiers:\n  - !EpochRangeModifier\n    start_epoch: [0\n    end_epoch: 2\n"
    bad, err = _check_error(tmp_path, capsys, text)
    assert err.startswith(f"sparseforge recipe: error: {bad}:") and "invalid YAML at column" in err


def test_recipe_check_refuses_hostile_recipes_and_recipe_args_in_one_line(tmp_path, capsys):
    bomb = tmp_path / "bomb.yaml"
    levels = ["a: &a [" + ",".join(['"lol"'] * 9) + "]"]
    levels += [
        f"{c}: &{c} [" + ",".join([f"*{p}"] * 9) + "]"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    ]
    bomb.write_text(
        "\n".join(levels)
        + "\ntraining_modifiers:\n  - !EpochRangeModifier {start_epoch: 0, end_epoch: 1}\n"
    )
    nan = tmp_path / "nan.yaml"
    nan.write_text(
        "training_modifiers:\n  - !EpochRangeModifier {start_epoch: 0, end_epoch: .nan}\n"
    )
    deep_args = '{"num_epochs": ' + "[" * 5000 + "]" * 5000 + "}"
    cases = [
        ([str(bomb)], "alias"),
        ([str(nan)], "field 'end_epoch': must be a finite number, got nan"),
        (
            [str(RECIPES / "transfer_style.yaml"), "--recipe_args", deep_args],
            "nests more than 64 levels deep",
        ),
    ]
    for argv, expected in cases:
        assert main(["recipe", "check", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err


def test_recipe_check_does_not_simulate_an_absurd_schedule(tmp_path, capsys):
    for end in ("end_epoch: 1e300", "end_step: 99999999999999999999"):
        recipe = tmp_path / "long.yaml"
        recipe.write_text(
            f"training_modifiers:\n  - !EpochRangeModifier {{start_epoch: 0, {end}}}\n"
        )
        start = time.perf_counter()
        assert main(["recipe", "check", str(recipe)]) == 0
        assert time.perf_counter() - start < HANG_SECONDS
        out = capsys.readouterr().out
        assert (
            "valid recipe, 1 modifier(s)" in out
            and "more than the 1,000,000 `recipe check` simulates" in out
        )
