"""A hostile recipe.yaml in a checkpoint (issue 20 item 6) ends `load_model` with a RecipeError, fast."""

from __future__ import annotations

import time

import pytest
from conftest import save_tiny_model
from hang import HANG_SECONDS
from recipe_mutations import alias_bomb

from sparseforge import RecipeError
from sparseforge.transformers import load_model

EPOCHS = "training_modifiers:\n  - !EpochRangeModifier {start_epoch: 0, end_epoch: 1}\n"


@pytest.mark.parametrize(
    ("recipe", "expected"),
    [
        (alias_bomb(8, 9) + EPOCHS, "aliases expand the recipe"),
        ("big: eval((10**10000)**1000)\n" + EPOCHS, "would exceed 256 bits"),
        (
            "training_modifiers:\n  - !EpochRangeModifier {start_epoch: 0, end_epoch: .nan}\n",
            "finite",
        ),
    ],
)
def test_load_model_refuses_a_hostile_recipe_yaml(tmp_path, recipe, expected):
    folder = save_tiny_model(tmp_path / "model")
    (folder / "recipe.yaml").write_text(recipe)
    start = time.perf_counter()
    with pytest.raises(RecipeError, match=expected) as info:
        load_model(folder, "text-classification")
    assert (
        time.perf_counter() - start < HANG_SECONDS
    )  # the model itself is built too; the recipe adds ~nothing
    assert info.value.file == str(folder / "recipe.yaml")
