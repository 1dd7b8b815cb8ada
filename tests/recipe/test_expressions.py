"""The safe eval() grammar: what it computes, and that nothing outside it runs."""

import re
import time

import pytest
from hang import HANG_SECONDS

from sparseforge.errors import RecipeError
from sparseforge.recipe.expressions import eval_expression_text, resolve_variables, safe_eval
from sparseforge.recipe.limits import MAX_EXPRESSION_CHARS, MAX_VARIABLE_CHAIN


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
    assert safe_eval("params", lookup_from({"params": ["a.weight", "re:b.*"]})) == [
        "a.weight",
        "re:b.*",
    ]


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


# ----- bounded work: every operation's result is checked, before a power is computed ----------


def timed(expr, values=None):
    """The RecipeError `safe_eval(expr)` raises and the seconds it took."""
    start = time.perf_counter()
    with pytest.raises(RecipeError) as info:
        safe_eval(expr, lookup_from(values or {}))
    return str(info.value), time.perf_counter() - start


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (
            "(10**10000)**1000",
            r"eval\(\(10\*\*10000\)\*\*1000\): 10 \*\* 10000 would exceed 256 bits",
        ),
        ("10.0**400", r"eval\(10.0\*\*400\): the result is too large to represent \(overflow\)"),
        ("2**256", r"the result: the integer is too large \(257 bits"),
        ("1e999", r"a constant: must be a finite number, got inf"),
        ("1e308 * 10", r"the result: must be a finite number, got inf"),
        ("int(1e300)", r"the result of int\(\): the integer is too large"),
        ("float(2**255) ** 5", r"overflow"),
        ("round(5, -10**70)", r"round\(\) to -10{70} digits; at most 400"),
        ("(-8) ** 0.5", r"the result is \(.*j\), not a real number"),
        ("x * 1", r"variable 'x': must be a finite number, got nan"),
        ("min()", r"eval\(min\(\)\): min expected at least 1 argument"),
    ],
)
def test_number_limits_name_the_expression(expr, expected):
    message, seconds = timed(expr, {"x": float("nan")})
    assert re.search(expected, message), message
    assert seconds < HANG_SECONDS


def test_largest_allowed_numbers_still_compute():
    assert safe_eval("2**255", lookup_from({})) == 2**255
    assert safe_eval("1e308 * 1.5", lookup_from({})) == pytest.approx(1.5e308)
    assert safe_eval("round(2.5, 400) + round(1234, -3)", lookup_from({})) == 1002.5


def test_a_chain_of_squares_stops_at_the_limit():
    raw = {"v0": 10, **{f"v{i}": f"eval(v{i - 1} ** 2)" for i in range(1, 40)}}
    start = time.perf_counter()
    with pytest.raises(RecipeError, match=r"would exceed 256 bits|the integer is too large"):
        resolve_variables(raw)
    assert time.perf_counter() - start < HANG_SECONDS
    assert (
        resolve_variables({k: raw[k] for k in ("v0", "v1", "v2", "v3", "v4", "v5", "v6")})["v6"]
        == 10**64
    )


def test_long_and_deep_expressions_are_refused_by_their_limits():
    message, seconds = timed("+".join(["1"] * 3000))
    assert (
        f"is 5,999 characters long; an expression may have at most {MAX_EXPRESSION_CHARS:,}"
        in message
    )
    assert seconds < HANG_SECONDS
    assert "nests more than 32 operations deep" in timed("+".join(["1"] * 40))[0]
    assert "too many nested parentheses" in timed("(" * 300 + "1" + ")" * 300)[0]
    assert safe_eval("+".join(["1"] * 30), lookup_from({})) == 30
    assert "5000 digits" in timed("1" * 5000)[0] or "characters long" in timed("1" * 5000)[0]


def test_a_1000_variable_chain_is_refused_by_the_chain_limit():
    raw = {f"v{i}": f"eval(v{i + 1} + 1)" for i in range(1000)} | {"v1000": 1}
    with pytest.raises(
        RecipeError, match=rf"more than {MAX_VARIABLE_CHAIN} deep \(v0 -> v1 -> v2 -> \.\.\."
    ):
        resolve_variables(raw)
    short = {f"v{i}": f"eval(v{i + 1} + 1)" for i in range(20)} | {"v20": 1}
    assert resolve_variables(short)["v0"] == 21


def test_messages_are_one_line_and_short():
    expr = "1 +\n" + " +\n".join(["x"] * 40)
    message, _ = timed(expr, {"x": 1})
    assert "\n" not in message and len(message) < 300
