"""How much work a recipe may cause: the limits, and the checks that enforce them.

A recipe is untrusted input (from a zoo, a colleague, a checkpoint's recipe.yaml), so loading one
must end quickly with a `Recipe` or a `RecipeError`, whatever the text. docs/recipes.md
("Limits") states these numbers for users; keep the two in step.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from typing import Any, TypeVar

import pydantic

from sparseforge.errors import RecipeError, SparseforgeError

MAX_RECIPE_CHARS = 1_000_000  # a recipe's text (SparseML's largest are ~20 KB)
MAX_YAML_DEPTH = 64  # nesting of mappings and lists, aliases expanded (SparseML's recipes: ~6)
MAX_YAML_VALUES = 100_000  # values in the document with every alias expanded (billion laughs)
MAX_EXPRESSION_CHARS = 1_000  # the text inside one eval(...)
MAX_EXPRESSION_DEPTH = 32  # nesting of one expression's operations (1+1+...+1 counts one per +)
MAX_VARIABLE_CHAIN = 32  # variables whose eval() needs another variable, which needs another, ...
MAX_INT_BITS = 256  # integers in eval() and in fields: |n| < 2**256 (about 1.2e77)
MAX_ROUND_DIGITS = 400  # round(x, n): |n| at most this

_F = TypeVar("_F", bound=Callable[..., Any])


def one_line(text: object, limit: int = 200) -> str:
    """`text` with runs of whitespace (newlines too) made one space, cut to `limit` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def number_problem(value: Any) -> str | None:
    """Why a number is out of bounds (NaN, infinite, too large an integer), or None if it is fine."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        return f"the integer is too large ({value.bit_length()} bits; at most {MAX_INT_BITS} bits, about 1.2e77)"
    return None


def field_value_problem(value: Any, depth: int = 0) -> str | None:
    """Why a modifier field value is unusable, or None: a number out of bounds anywhere inside it,
    or a `re:` pattern that is not a valid regular expression (caught at load, not in training)."""
    if depth > MAX_YAML_DEPTH:
        return f"nests more than {MAX_YAML_DEPTH} levels deep"
    if isinstance(value, str):
        if value.startswith("re:"):
            try:
                re.compile(value[3:])
            except (re.error, RecursionError, OverflowError) as err:
                return f"{one_line(value, 80)!r} is not a valid regular expression: {one_line(err, 120)}"
        return None
    if isinstance(value, (list, tuple, set, frozenset)):
        items: Any = value
    elif isinstance(value, dict):
        items = list(value.values())
    elif isinstance(value, pydantic.BaseModel):  # a nested spec, e.g. a quantization scheme
        items = list(vars(value).values())
    else:
        return number_problem(value)
    for item in items:
        problem = field_value_problem(item, depth + 1)
        if problem:
            return problem
    return None


def recipe_errors_only(func: _F) -> _F:
    """Make a loading entry point keep the contract: it returns, or raises a RecipeError.

    Anything else escaping the loader is a sparseforge bug; it still becomes a RecipeError so a
    user sees one line, marked "unexpected" so the fuzz tests notice it.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SparseforgeError:
            raise
        except RecursionError:
            raise RecipeError(
                "the recipe nests too deeply (YAML nesting, eval() expressions or chains of variables)"
            ) from None
        except (ValueError, TypeError, ArithmeticError, LookupError, AttributeError) as err:
            raise RecipeError(
                f"cannot load the recipe: unexpected {type(err).__name__}: {one_line(err)} "
                "(a sparseforge bug: please report it)"
            ) from err

    return wrapper  # type: ignore[return-value]
