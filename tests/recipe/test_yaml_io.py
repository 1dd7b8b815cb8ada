"""Bounded YAML reading: alias bombs, deep nesting and bad scalars end in a located RecipeError, fast."""

import re
import time

import pytest
from hang import HANG_SECONDS
from recipe_mutations import alias_bomb

from sparseforge import Recipe, RecipeError
from sparseforge.recipe.limits import MAX_YAML_DEPTH, MAX_YAML_VALUES
from sparseforge.recipe.yaml_io import load_plain_yaml, load_yaml

EPOCHS = "training_modifiers:\n  - !EpochRangeModifier {start_epoch: 0, end_epoch: 2}\n"


def timed_error(text, **kwargs):
    """The RecipeError loading `text` raises, and the seconds it took."""
    start = time.perf_counter()
    with pytest.raises(RecipeError) as info:
        Recipe.load(text, **kwargs)
    return info.value, time.perf_counter() - start


def test_billion_laughs_is_refused_fast():
    bomb = alias_bomb(8, 9)
    assert len(bomb.encode()) < 500  # the issue's case: 8 levels of aliases in under 500 bytes
    err, seconds = timed_error(bomb + EPOCHS)
    assert f"more than {MAX_YAML_VALUES:,} values" in str(err) and "alias" in str(err)
    assert (
        err.line == 6
    )  # level f (9**6 values) is the first over the limit: the error points at it
    assert seconds < HANG_SECONDS


def test_merge_key_bomb_is_refused():
    lines = ["m0: &m0 {a: 1, b: 2, c: 3}"]
    lines += [f"m{i}: &m{i} {{<<: [" + ", ".join([f"*m{i - 1}"] * 9) + "]}" for i in range(1, 9)]
    err, seconds = timed_error("\n".join(lines) + "\n" + EPOCHS)
    assert "alias" in str(err) and seconds < HANG_SECONDS


def test_recursive_alias_is_refused():
    err, _ = timed_error("loop: &loop [1, *loop]\n" + EPOCHS)
    assert "refers to a node that contains it" in str(err) and err.line == 1


def test_normal_anchors_and_merge_keys_still_load():
    text = (
        "epochs: &epochs 3\n"
        "frozen: &frozen ['re:bert.embeddings.*', 're:bert.pooler.*']\n"
        "base: &base {start_epoch: 0.0, end_epoch: *epochs}\n"
        "training_modifiers:\n"
        "  - !EpochRangeModifier {<<: *base}\n"
        "  - !TrainableParamsModifier {params: *frozen, trainable: false, start_epoch: 0.0, end_epoch: *epochs}\n"
    )
    epoch_range, trainable = Recipe.load(text).modifiers
    assert (epoch_range.start_epoch, epoch_range.end_epoch) == (0.0, 3.0)
    assert (
        trainable.params == ["re:bert.embeddings.*", "re:bert.pooler.*"]
        and trainable.end_epoch == 3.0
    )


def test_400_levels_of_nesting_is_a_recipe_error():
    for deep in ("[" * 400 + "]" * 400, "{a: " * 400 + "1" + "}" * 400, "\n  " + "- " * 400 + "1"):
        err, seconds = timed_error("deep: " + deep + "\n" + EPOCHS)
        assert f"more than {MAX_YAML_DEPTH} levels deep" in str(err) and seconds < HANG_SECONDS


def test_aliases_cannot_nest_past_the_depth_limit():
    inner = "[" * 40 + "]" * 40
    text = f"a: &a {inner}\nb: &b " + "[" * 30 + "*a" + "]" * 30 + "\n" + EPOCHS
    err, _ = timed_error(text)
    assert "aliases make the recipe nest more than" in str(err)
    assert load_yaml(f"a: &a {inner}\nb: " + "[" * 10 + "*a" + "]" * 10 + "\n")[
        "b"
    ]  # 51 levels: fine


@pytest.mark.parametrize(
    ("scalar", "expected"),
    [
        ("!!bool maybe", r"'maybe' is not a valid !!bool value"),
        ("1" * 5000, r"is not a valid !!int value \(Exceeds the limit \(4300 digits\)"),
        ("!!int 1x", r"'1x' is not a valid !!int value"),
        ("!!timestamp 2020-99-99", r"is not a valid !!timestamp value"),
        ("!!float abc", r"'abc' is not a valid !!float value"),
    ],
)
def test_bad_scalars_are_located_recipe_errors(scalar, expected):
    err, _ = timed_error(f"x: 1\ny: {scalar}\n" + EPOCHS)
    assert err.line == 2
    assert re.search(expected, str(err)), str(err)


def test_syntax_errors_are_one_line_with_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("a: 1\nm_modifiers:\n  - !EpochRangeModifier {start_epoch: 0\nb: [1,\n")
    with pytest.raises(RecipeError) as info:
        Recipe.load(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:4: invalid YAML at column ")
    control = load_error("a: \x01\n")
    assert "\n" not in control and "control characters are not allowed" in control


def load_error(text):
    with pytest.raises(RecipeError) as info:
        load_yaml(text)
    return str(info.value)


def test_plain_yaml_has_the_same_bounds_and_no_modifier_tags():
    assert load_plain_yaml("[1, 2.5, x]") == [1, 2.5, "x"]
    with pytest.raises(RecipeError, match="values"):
        load_plain_yaml(alias_bomb(8, 9))
    with pytest.raises(RecipeError, match="could not determine a constructor"):
        load_plain_yaml("!GMPruningModifier {}")


def test_an_absurdly_long_tag_is_refused_without_echoing_it():
    err, _ = timed_error("m_modifiers:\n  - !" + "A" * 100_000 + " {}\n")
    assert "(100,000 characters) is not a modifier name" in str(err) and len(str(err)) < 200
