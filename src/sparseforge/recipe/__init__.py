"""Recipe parsing, safe expressions, variables, stages and serialization."""

from sparseforge.recipe.recipe import Recipe, Stage, parse_recipe_args

__all__ = ["Recipe", "Stage", "parse_recipe_args"]
