"""Safe evaluation of the `eval(...)` expressions SparseML recipes contain.

Recipes come from the internet, so their text never reaches Python's `eval`: an AST walker
accepts numbers, variable names, arithmetic and a handful of numeric functions, and nothing else.
The work is bounded too (see `limits`): the expression's length and nesting, and every number an
operation produces (finite floats, integers under 2**256, checked before a power is computed), so
`eval((10**10000)**1000)` is refused at once instead of running for hours.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

from sparseforge.errors import RecipeError
from sparseforge.recipe.limits import (
    MAX_EXPRESSION_CHARS,
    MAX_EXPRESSION_DEPTH,
    MAX_INT_BITS,
    MAX_ROUND_DIGITS,
    MAX_VARIABLE_CHAIN,
    number_problem,
    one_line,
)

EVAL_PATTERN = re.compile(r"^\s*eval\((?P<expr>.*)\)\s*$", re.DOTALL)

_BINARY_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Pow: operator.pow,
    ast.Mod: operator.mod,
}
_UNARY_OPS: dict[type, Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs,
    "float": float,
    "int": int,
    "min": min,
    "max": max,
    "round": round,
}
ALLOWED_SUMMARY = "numbers, variable names, + - * / // ** %, unary minus, parentheses, abs float int min max round"


def eval_expression_text(value: Any) -> str | None:
    """Return the inner expression of an `eval(...)` string value, or None for other values."""
    if not isinstance(value, str):
        return None
    match = EVAL_PATTERN.match(value)
    return match.group("expr") if match else None


def as_number(value: Any) -> Any:
    """Coerce numeric-looking strings (YAML 1.1 reads `8e-5` as a string) to numbers."""
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            return float(text)
        except ValueError:
            return value
    return value


def safe_eval(expr: str, lookup: Callable[[str], Any]) -> Any:
    """Evaluate `expr` with variables resolved by `lookup`; anything outside the grammar is an error.

    A bare variable name yields the variable's value whatever its type (a list of parameter
    names, say); every other form must produce a number.
    """
    shown = one_line(expr, 80)
    if len(expr) > MAX_EXPRESSION_CHARS:
        raise RecipeError(
            f"eval({shown}) is {len(expr):,} characters long; an expression may have at most {MAX_EXPRESSION_CHARS:,}"
        )
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as err:
        raise RecipeError(f"cannot parse eval({shown}): {err.msg}") from None
    except (ValueError, RecursionError, MemoryError, OverflowError) as err:
        raise RecipeError(f"cannot parse eval({shown}): {one_line(err, 120)}") from None
    if isinstance(tree.body, ast.Name):
        return lookup(tree.body.id)
    return _walk(tree.body, lookup, shown, 0)


def _numeric(value: Any, name: str, expr: str) -> int | float:
    value = as_number(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecipeError(
            f"eval({expr}): variable '{name}' is {value!r}, not a number, so it cannot be used in arithmetic"
        )
    return _bounded(value, expr, f"variable '{name}'")


def _bounded(value: Any, expr: str, what: str) -> int | float:
    """`value` if it is a real number within the limits; otherwise a RecipeError naming `what`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecipeError(f"eval({expr}): {what} is {value!r}, not a real number")
    problem = number_problem(value)
    if problem:
        raise RecipeError(f"eval({expr}): {what}: {problem}")
    return value


def _power_fits(left: int | float, right: int | float) -> bool:
    """Whether int ** int stays within MAX_INT_BITS, judged before computing it."""
    if not (isinstance(left, int) and isinstance(right, int)) or right <= 1 or abs(left) <= 1:
        return True
    return (abs(left).bit_length() - 1) * right <= MAX_INT_BITS


def _walk(node: ast.AST, lookup: Callable[[str], Any], expr: str, depth: int) -> int | float:
    if depth > MAX_EXPRESSION_DEPTH:
        raise RecipeError(f"eval({expr}) nests more than {MAX_EXPRESSION_DEPTH} operations deep")
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise RecipeError(
                f"eval({expr}): only numbers are allowed as constants, got {node.value!r}"
            )
        return _bounded(node.value, expr, "a constant")
    if isinstance(node, ast.Name):
        return _numeric(lookup(node.id), node.id, expr)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
        left = _walk(node.left, lookup, expr, depth + 1)
        right = _walk(node.right, lookup, expr, depth + 1)
        if isinstance(node.op, ast.Pow) and not _power_fits(left, right):
            raise RecipeError(f"eval({expr}): {left} ** {right} would exceed {MAX_INT_BITS} bits")
        return _bounded(_apply(_BINARY_OPS[type(node.op)], (left, right), expr), expr, "the result")
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_OPS:
        return _UNARY_OPS[type(node.op)](_walk(node.operand, lookup, expr, depth + 1))
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
    ):
        args = [_walk(arg, lookup, expr, depth + 1) for arg in node.args]
        if node.func.id == "round" and len(args) == 2 and abs(args[1]) > MAX_ROUND_DIGITS:
            raise RecipeError(
                f"eval({expr}): round() to {args[1]} digits; at most {MAX_ROUND_DIGITS}"
            )
        result = _apply(_FUNCTIONS[node.func.id], args, expr)
        return _bounded(result, expr, f"the result of {node.func.id}()")
    raise RecipeError(
        f"eval({expr}): '{one_line(ast.unparse(node), 60)}' is not allowed; expressions may use {ALLOWED_SUMMARY}"
    )


def _apply(function: Callable[..., Any], args: Any, expr: str) -> Any:
    """Call an operator or function of the grammar; Python's arithmetic errors become RecipeError."""
    try:
        return function(*args)
    except ZeroDivisionError:
        raise RecipeError(f"eval({expr}): division by zero") from None
    except OverflowError:
        raise RecipeError(
            f"eval({expr}): the result is too large to represent (overflow)"
        ) from None
    except (TypeError, ValueError) as err:
        raise RecipeError(f"eval({expr}): {one_line(err, 120)}") from None


def resolve_variables(
    raw: Mapping[str, Any], where: Callable[[str], dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Resolve every variable, in any order of definition; cycles and undefined names are errors.

    `where(name)` gives location keywords (file/line) for errors about a variable.
    """
    resolved: dict[str, Any] = {}
    resolving: list[str] = []
    locate = where or (lambda name: {})

    def lookup(name: str) -> Any:
        if name in resolved:
            return resolved[name]
        if name not in raw:
            user = resolving[-1] if resolving else None
            raise RecipeError(
                f"eval refers to undefined variable '{name}'"
                + (f" (in variable '{user}')" if user else "")
                + f"; defined variables: {', '.join(sorted(raw)) or 'none'}",
                **(locate(user) if user else {}),
            )
        if name in resolving:
            cycle = " -> ".join(resolving[resolving.index(name) :] + [name])
            raise RecipeError(f"variables refer to each other in a cycle: {cycle}", **locate(name))
        if len(resolving) >= MAX_VARIABLE_CHAIN:
            chain = " -> ".join(resolving[:3] + ["..."] + resolving[-2:] + [name])
            raise RecipeError(
                f"variables refer to each other more than {MAX_VARIABLE_CHAIN} deep ({chain})",
                **locate(name),
            )
        resolving.append(name)
        try:
            resolved[name] = resolve_value(raw[name], lookup, locate(name))
        finally:
            resolving.pop()
        return resolved[name]

    for name in raw:
        lookup(name)
    return resolved


def resolve_value(
    value: Any, lookup: Callable[[str], Any], location: dict[str, Any] | None = None
) -> Any:
    """Replace each `eval(...)` string inside `value` (nested lists/dicts too) by its result."""
    expr = eval_expression_text(value)
    if expr is not None:
        try:
            return safe_eval(expr, lookup)
        except RecipeError as err:
            raise err.located(**(location or {})) from None
    if isinstance(value, list):
        return [resolve_value(item, lookup, location) for item in value]
    if isinstance(value, dict):
        return {key: resolve_value(item, lookup, location) for key, item in value.items()}
    return value
