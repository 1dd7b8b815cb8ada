"""The limits' checks on their own: numbers, field values, and the loading contract's wrapper."""

import pytest

from sparseforge.errors import ModelMatchError, RecipeError
from sparseforge.recipe.limits import (
    MAX_INT_BITS,
    field_value_problem,
    number_problem,
    one_line,
    recipe_errors_only,
)


def test_number_problem():
    assert (
        number_problem(2**MAX_INT_BITS - 1) is None
        and number_problem(-(2**MAX_INT_BITS - 1)) is None
    )
    assert "too large (257 bits" in number_problem(2**MAX_INT_BITS)
    assert number_problem(float("nan")) == "must be a finite number, got nan"
    assert number_problem(float("-inf")) == "must be a finite number, got -inf"
    assert (
        number_problem(True) is None
        and number_problem(1.5e308) is None
        and number_problem("x") is None
    )


def test_field_value_problem_looks_inside_lists_and_dicts():
    assert (
        field_value_problem({"a": [1, {"b": float("nan")}]}) == "must be a finite number, got nan"
    )
    assert "not a valid regular expression" in field_value_problem(["re:ok.*", "re:(?P<x"])
    assert (
        field_value_problem(["re:bert\\.encoder\\.layer\\.\\d+\\..*", "plain(name", {"k": 3}])
        is None
    )
    nested: list = []
    for _ in range(100):
        nested = [nested]
    assert "nests more than" in field_value_problem(nested)


def test_recipe_errors_only_keeps_the_contract():
    @recipe_errors_only
    def recurse(n):
        return recurse(n + 1)

    @recipe_errors_only
    def type_error():
        return 1 + "x"

    @recipe_errors_only
    def model_match():
        raise ModelMatchError("kept as it is")

    with pytest.raises(RecipeError, match="nests too deeply"):
        recurse(0)
    with pytest.raises(
        RecipeError, match=r"unexpected TypeError: unsupported operand.*a sparseforge bug"
    ):
        type_error()
    with pytest.raises(ModelMatchError, match="kept as it is"):
        model_match()


def test_one_line():
    assert one_line("a\n  b\tc") == "a b c"
    assert one_line("x" * 300, 20) == "x" * 17 + "..."
