"""Fuzz: seeded mutations of the shipped recipes and the seed recipe must each load or raise
RecipeError within a second of CPU time (issue 20's contract). bench/fuzz_recipes.py runs more."""

from hang import HANG_SECONDS
from recipe_mutations import mutations, run_fuzz, seed_recipes

COUNT = 600


def test_the_mutations_cover_the_shipped_and_seed_recipes_and_every_kind():
    seeds = seed_recipes()
    assert "tests/fixtures/recipes/seed_recipe.md" in seeds
    assert sum(name.startswith("src/sparseforge/recipes/") for name in seeds) >= 16
    kinds = {kind.split("+")[0] for _, kind, _ in mutations(COUNT, seed=20)}
    assert kinds == {"flip", "delete", "duplicate", "number", "hostile", "truncate", "comments"}


def test_every_mutation_loads_or_raises_recipe_error_in_time():
    report = run_fuzz(COUNT, seed=20, time_limit=HANG_SECONDS)
    shown = [(name, kind, outcome, text[:300]) for name, kind, outcome, text in report.failures[:5]]
    assert not report.failures, (
        f"{len(report.failures)} of {COUNT} inputs broke the contract: {shown}"
    )
    # both outcomes occur: the mutations neither all break the recipes nor all leave them valid
    assert report.outcomes["loaded"] > COUNT // 10 and report.outcomes["RecipeError"] > COUNT // 10
    assert sum(report.outcomes.values()) == COUNT
