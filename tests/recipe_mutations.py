"""Seeded mutations of real recipes, for the recipe-loading fuzz test and bench/fuzz_recipes.py.

Each mutation is what a careless user or an attacker could hand to `Recipe.load`: flipped bytes,
deleted or duplicated lines, numbers replaced by huge, NaN, negative or malformed values, alias
bombs, deep nesting, long expressions, long chains of variables, comment bombs before the front
matter. The contract under test: `Recipe.load` returns or raises RecipeError, quickly.
"""

from __future__ import annotations

import random
import re
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

TESTS = Path(__file__).parent
SHIPPED = TESTS.parent / "src" / "sparseforge" / "recipes"

_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.])")
_HOSTILE_NUMBERS = [
    "1e999",
    "-1e999",
    ".nan",
    ".NaN",
    ".inf",
    "-.inf",
    "nan",
    "-1",
    "-5",
    "-0.5",
    "0",
    "1e-400",
    "1" * 5000,
    "9" * 400,
    "99999999999999999999999",
    "eval(10.0**400)",
    "eval((10**10000)**1000)",
    "eval(2**256)",
    "eval(10**77 * 10**77)",
    "eval(1e308 * 10)",
    "eval(1/0)",
    "eval(int(1e300))",
    "eval(round(5, -10**70))",
    "eval(float(10**300) ** 2)",
    "eval((-8) ** 0.5)",
    "!!bool maybe",
    "!!int 1x",
    "!!float abc",
    "!!timestamp 2020-99-99",
    "['1']",
    "[1, '2']",
    "{}",
    "[]",
    "null",
    "re:(",
    "'re:(*'",
    "eval(x)",
    "eval(num_epochs ** num_epochs ** num_epochs)",
    "2001-12-14",
]
_FLIP_CHARS = list(":-[]{}&*!|>#%@`'\"\n\t \x00\x01\x7f\ufeff,?=<") + ["<!--", "---", "\r"]


def seed_recipes() -> dict[str, str]:
    """The recipes mutated: every shipped recipe and the test fixtures (the seed recipe among them)."""
    paths = sorted(SHIPPED.rglob("*.md")) + sorted(SHIPPED.rglob("*.yaml"))
    paths += sorted((TESTS / "fixtures" / "recipes").glob("*"))
    return {str(path.relative_to(TESTS.parent)): path.read_text(encoding="utf-8") for path in paths}


def _flip(rng: random.Random, text: str) -> str:
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(len(text))
        text = text[:pos] + rng.choice(_FLIP_CHARS) + text[pos + 1 :]
    return text


def _lines(rng: random.Random, text: str, duplicate: bool) -> str:
    lines = text.splitlines(keepends=True)
    for _ in range(rng.randint(1, 3)):
        if not lines:
            break
        pos = rng.randrange(len(lines))
        if duplicate:
            lines[pos:pos] = [lines[pos]] * rng.randint(1, 3)
        else:
            del lines[pos]
    return "".join(lines)


def _number(rng: random.Random, text: str) -> str:
    matches = list(_NUMBER.finditer(text))
    for match in rng.sample(matches, k=min(len(matches), rng.randint(1, 2))):
        text = text[: match.start()] + rng.choice(_HOSTILE_NUMBERS) + text[match.end() :]
        break  # positions after the first replacement moved; one per pass keeps it simple
    return text


def alias_bomb(levels: int = 8, width: int = 9) -> str:
    """The 'billion laughs': each level lists the previous one `width` times (8 levels: 9**9 values)."""
    names = "abcdefghijklmnopqrstuvwxyz"
    lines = ["a: &a [" + ",".join(['"lol"'] * width) + "]"]
    for level in range(1, levels + 1):
        name, previous = names[level], names[level - 1]
        lines.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * width) + "]")
    return "\n".join(lines) + "\n"


def _merge_bomb(levels: int) -> str:
    lines = ["m0: &m0 {a: 1, b: 2, c: 3}"]
    for level in range(1, levels + 1):
        lines.append(f"m{level}: &m{level} {{<<: [" + ", ".join([f"*m{level - 1}"] * 9) + "]}")
    return "\n".join(lines) + "\n"


def _insert_top(rng: random.Random, text: str, block: str) -> str:
    """Put `block` (top-level YAML) just inside the front matter, or at the top of plain YAML."""
    fence = text.find("\n---\n")
    if fence >= 0:
        return text[: fence + 5] + block + text[fence + 5 :]
    return block + text


def _hostile_block(rng: random.Random) -> str:
    kind = rng.randrange(9)
    depth = rng.choice([10, 70, 400, 3000])
    if kind == 0:
        return alias_bomb(rng.randint(4, 9), rng.randint(5, 12))
    if kind == 1:
        return _merge_bomb(rng.randint(3, 8))
    if kind == 2:
        return "deep: " + "[" * depth + "]" * depth + "\n"
    if kind == 3:
        return "deep: " + "{a: " * depth + "1" + "}" * depth + "\n"
    if kind == 4:
        return "terms: eval(" + "+".join(["1"] * rng.choice([10, 500, 3000])) + ")\n"
    if kind == 5:
        count = rng.choice([5, 40, 1000])
        return "".join(f"v{i}: eval(v{i + 1} + 1)\n" for i in range(count)) + f"v{count}: 1\n"
    if kind == 6:
        return "self: &self [*self]\n"
    if kind == 7:
        return "sq0: 10\n" + "".join(
            f"sq{i}: eval(sq{i - 1} ** 2)\n" for i in range(1, rng.choice([5, 20, 60]))
        )
    return "parens: eval(" + "(" * depth + "1" + ")" * depth + ")\n"


def mutate(rng: random.Random, text: str) -> tuple[str, str]:
    """One mutation of `text`: (kind, mutated text)."""
    kind = rng.choice(
        ["flip", "delete", "duplicate", "number", "number", "hostile", "truncate", "comments"]
    )
    if not text.strip():
        return "hostile", _hostile_block(rng)
    if kind == "flip":
        return kind, _flip(rng, text)
    if kind in ("delete", "duplicate"):
        return kind, _lines(rng, text, duplicate=kind == "duplicate")
    if kind == "number":
        return kind, _number(rng, _number(rng, text))
    if kind == "hostile":
        return kind, _insert_top(rng, text, _hostile_block(rng))
    if kind == "truncate":
        return kind, text[: rng.randrange(len(text))]
    # a comment bomb before the front matter: many unclosed `<!--` (quadratic for a naive regex)
    return kind, "<!--" * rng.choice([10, 30_000]) + rng.choice(["", "-->"]) + "\n" + text


def mutations(count: int, seed: int = 0) -> Iterator[tuple[str, str, str]]:
    """`count` seeded mutations: (seed recipe name, mutation kind, text)."""
    rng = random.Random(seed)
    seeds = seed_recipes()
    names = sorted(seeds)
    for _ in range(count):
        name = rng.choice(names)
        kind, text = mutate(rng, seeds[name])
        if rng.random() < 0.2:  # sometimes a second mutation on top
            kind2, text = mutate(rng, text)
            kind = f"{kind}+{kind2}"
        yield name, kind, text


class _Timeout(BaseException):
    """Raised by the alarm: a BaseException so that no `except Exception` in the loader eats it."""


@dataclass
class FuzzReport:
    """Outcomes of a fuzz run: counts, failures (anything but a Recipe or a RecipeError), the slowest."""

    outcomes: Counter = field(default_factory=Counter)
    by_kind: Counter = field(default_factory=Counter)  # (first mutation kind, outcome) -> count
    failures: list[tuple[str, str, str, str]] = field(
        default_factory=list
    )  # (seed, kind, outcome, text)
    slowest: tuple[float, str, str, str] = (0.0, "", "", "")  # (seconds, seed, kind, text)
    seconds: float = 0.0


def load_outcome(text: str, markdown: bool, hard_limit: float) -> str:
    """'loaded' or 'RecipeError', else the failure: 'unexpected RecipeError: ...', 'Type: ...',
    'timeout', or a loaded recipe whose saved YAML does not load back the same."""
    from sparseforge.errors import RecipeError
    from sparseforge.recipe import Recipe

    def on_alarm(signum: int, frame: object) -> None:
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, hard_limit)
    try:
        recipe = Recipe.from_text(text, markdown=markdown)
        return _reload_outcome(recipe)
    except RecipeError as err:
        if "a sparseforge bug" in str(err) or "\n" in str(err):
            return f"unexpected RecipeError: {str(err)[:200]!r}"
        return "RecipeError"
    except _Timeout:
        return "timeout"
    except Exception as err:  # noqa: BLE001 - what the contract forbids is what we report
        return f"{type(err).__name__}: {str(err)[:200]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _reload_outcome(recipe: object) -> str:
    """A recipe that loaded must save as YAML that loads back to the same modifiers."""
    from sparseforge.recipe import Recipe

    try:
        again = Recipe.from_text(recipe.to_yaml())  # type: ignore[attr-defined]
    except Exception as err:  # noqa: BLE001
        return f"saved recipe does not load back: {type(err).__name__}: {str(err)[:200]}"
    if [m.recipe_fields() for m in again.modifiers] != [
        m.recipe_fields() for m in recipe.modifiers
    ]:  # type: ignore[attr-defined]
        return "saved recipe loads back different"
    return "loaded"


def run_fuzz(
    count: int,
    seed: int = 0,
    time_limit: float = 1.0,
    progress: Callable[[int], None] | None = None,
) -> FuzzReport:
    """Load `count` mutations; an input fails if it raises anything but RecipeError or takes over
    `time_limit` seconds of CPU time (CPU, not wall clock, so a busy machine does not fail it)."""
    report = FuzzReport()
    for (
        name,
        text,
    ) in seed_recipes().items():  # warm up: the first load imports every modifier module
        load_outcome(text, markdown=name.endswith(".md"), hard_limit=60.0)
    start = time.perf_counter()
    for index, (name, kind, text) in enumerate(mutations(count, seed)):
        cpu = time.process_time()
        outcome = load_outcome(
            text, markdown=name.endswith(".md"), hard_limit=max(10 * time_limit, 5.0)
        )
        spent = time.process_time() - cpu
        if outcome in ("loaded", "RecipeError") and spent > time_limit:
            outcome = f"slow ({spent:.2f} s CPU)"
        bucket = outcome if outcome in ("loaded", "RecipeError") else "failure"
        report.outcomes[bucket] += 1
        report.by_kind[(kind.split("+")[0], bucket)] += 1
        if outcome not in ("loaded", "RecipeError"):
            report.failures.append((name, kind, outcome, text))
        if spent > report.slowest[0]:
            report.slowest = (spent, name, kind, text)
        if progress:
            progress(index + 1)
    report.seconds = time.perf_counter() - start
    return report
