"""The safe eval() grammar: what it computes, and that nothing outside it runs."""

import pytest

from sparseforge.errors import RecipeError
from sparseforge.recipe.expressions import eval_expression_text, resolve_variables, safe_eval


def lookup_from(values):
    def lookup(name):
        if name not in values:
            raise RecipeError(f"undefined {name}")
        return values[name]

    return lookup


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("2 ** 10", 1024),
        ("7 // 2", 3),
        ("7 % 4", 3),
        ("-x + 1", -4),
        ("x / 2", 2.5),
        ("max(x, 10) - min(1, 2)", 9),
        ("round(2.6) + int(3.9) + float(1) + abs(-2)", 9.0),
        ("lr * 2", 1.6e-4),
    ],
)
def test_arithmetic(expr, expected):
    assert safe_eval(expr, lookup_from({"x": 5, "lr": "8e-5"})) == pytest.approx(expected)


def test_bare_name_returns_non_numeric_value():
    assert safe_eval("params", lookup_from({"params": ["a.weight", "re:b.*"]})) == ["a.weight", "re:b.*"]


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('echo hacked')",
        "open('/etc/passwd')",
        "x.__class__",
        "(lambda: 1)()",
        "[1, 2]",
        "'text'",
        "x if x else 1",
        "exec('1')",
        "eval('1')",
        "10 ** 100000",
        "1 / 0",
        "params + 1",
    ],
)
def test_rejects_everything_outside_the_grammar(expr):
    with pytest.raises(RecipeError):
        safe_eval(expr, lookup_from({"x": 1, "params": ["a"]}))


def test_eval_text_detection():
    assert eval_expression_text("eval(a + 1)") == "a + 1"
    assert eval_expression_text("  eval(num_epochs)  ") == "num_epochs"
    assert eval_expression_text("evaluate(a)") is None
    assert eval_expression_text(3) is None


def test_variables_resolve_in_any_order():
    raw = {"end": "eval(start + length)", "length": "eval(base * 2)", "start": 1, "base": 3}
    assert resolve_variables(raw) == {"end": 7, "length": 6, "start": 1, "base": 3}


def test_cycle_names_the_variables():
    with pytest.raises(RecipeError, match=r"cycle: a -> b -> a"):
        resolve_variables({"a": "eval(b + 1)", "b": "eval(a)"})


def test_undefined_variable_names_it():
    with pytest.raises(RecipeError, match=r"undefined variable 'missing'.*in variable 'a'"):
        resolve_variables({"a": "eval(missing * 2)"})
