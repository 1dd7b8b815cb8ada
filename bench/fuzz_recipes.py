"""Fuzz run (issue 20): thousands of mutated recipes through `Recipe.load`, counted by outcome.

    python bench/fuzz_recipes.py [--count 5000] [--seed 0] [--time-limit 1.0]

Inputs: seeded mutations (tests/recipe_mutations.py: byte flips, deleted/duplicated lines,
numbers replaced by huge/NaN/negative/malformed values, alias bombs, deep nesting, long
expressions and variable chains, comment bombs) of every shipped recipe
(src/sparseforge/recipes/**) and the test fixtures, the seed recipe among them. The contract:
each input loads (and its saved YAML loads back to the same modifiers) or raises RecipeError,
within `--time-limit` seconds of CPU time. Prints the counts per outcome, every failure, and
the slowest input; exits 1 if any input broke the contract. The test suite runs a few hundred
of the same mutations (tests/recipe/test_fuzz.py).
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from recipe_mutations import run_fuzz, seed_recipes  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000, help="inputs to try")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mutations")
    parser.add_argument(
        "--time-limit", type=float, default=1.0, help="CPU seconds allowed per input"
    )
    args = parser.parse_args()

    seeds = seed_recipes()
    print(
        f"python {platform.python_version()}, {platform.machine()}; {len(seeds)} seed recipes, {args.count} mutations, seed {args.seed}"
    )

    def progress(done: int) -> None:
        if done % 1000 == 0:
            print(f"  {done} inputs", flush=True)

    report = run_fuzz(args.count, seed=args.seed, time_limit=args.time_limit, progress=progress)
    print(
        f"\n{args.count} inputs in {report.seconds:.1f} s ({1000 * report.seconds / args.count:.1f} ms each on average)"
    )
    for outcome in ("loaded", "RecipeError", "failure"):
        print(f"  {outcome:<12} {report.outcomes[outcome]:>6}")
    kinds = sorted({kind for kind, _ in report.by_kind})
    print("\nby the first mutation applied (20% of inputs get a second one):")
    print(f"  {'mutation':<10} {'loaded':>7} {'RecipeError':>12} {'failure':>8}")
    for kind in kinds:
        counts = [
            report.by_kind[(kind, outcome)] for outcome in ("loaded", "RecipeError", "failure")
        ]
        print(f"  {kind:<10} {counts[0]:>7} {counts[1]:>12} {counts[2]:>8}")
    seconds, name, kind, text = report.slowest
    print(
        f"slowest: {seconds * 1000:.0f} ms CPU, a '{kind}' mutation of {name} ({len(text):,} characters)"
    )
    print("  " + " ".join(text[:160].split()) + (" ..." if len(text) > 160 else ""))
    if report.failures:
        print("\nfailures (the contract broken):")
        for outcome, count in Counter(
            outcome for _, _, outcome, _ in report.failures
        ).most_common():
            print(f"  {count:>5}  {outcome}")
        for name, kind, outcome, text in report.failures[:3]:
            print(f"\n--- {kind} of {name}: {outcome}\n{text[:500]}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
