"""Staged recipes as SparseML reads them: absolute epochs, compose_staged, stage variable scoping."""

import pytest

from sparseforge import Manager, Recipe, RecipeError
from sparseforge.cli import main
from sparseforge.recipe.recipe import METADATA_KEY

TWO_STAGES = """
version: 1.1.0
stage_0:
  stage_0_modifiers:
    - !EpochRangeModifier {start_epoch: 0, end_epoch: 6}
stage_1:
  stage_1_modifiers:
    - !EpochRangeModifier {start_epoch: 3, end_epoch: 9}
    - !ConstantPruningModifier {params: __ALL_PRUNABLE__, start_epoch: 5, end_epoch: 8}
"""

BASE = """
training_modifiers:
  - !EpochRangeModifier {start_epoch: 0, end_epoch: 4}
  - !SetWeightDecayModifier {weight_decay: 0.01, start_epoch: 0}
"""
ADDITIONAL = """
training_modifiers:
  - !EpochRangeModifier {start_epoch: 0, end_epoch: 2}
  - !SetLearningRateModifier {learning_rate: 0.1}
  - !TrainableParamsModifier {params: __ALL__, trainable: false, start_epoch: 1, end_epoch: -1}
"""


def test_a_staged_file_holds_absolute_epochs():
    """Issue 18.1: stage_1 runs 3 -> 9 and its ConstantPruning 5 -> 8; max_epochs is 9, not 12."""
    recipe = Recipe.load(TWO_STAGES)
    epoch_range, constant = recipe.stages[1].modifiers
    assert (epoch_range.scheduled_start, epoch_range.scheduled_end) == (3.0, 9.0)
    assert (constant.scheduled_start, constant.scheduled_end) == (5.0, 8.0)
    assert recipe.max_epochs == 9
    manager = Manager(recipe)
    assert manager.max_epochs == 9 and manager.num_stages() == 2


def test_compose_staged_moves_the_additional_recipe_after_the_base():
    """SparseML's compose_staged: additional shifted by base.max_epochs; base's -1 ends become it."""
    composed = Recipe.compose_staged(BASE, ADDITIONAL)
    assert [stage.name for stage in composed.stages] == ["stage_0", "stage_1"]
    base_range, decay = composed.stages[0].modifiers
    assert decay.end_epoch == 4.0  # end_epoch -1 of the base becomes the base's end
    epoch_range, set_lr, frozen = composed.stages[1].modifiers
    assert (epoch_range.start_epoch, epoch_range.end_epoch) == (4.0, 6.0)
    assert set_lr.start_epoch == 4.0  # "at once" means at the start of its stage
    assert (frozen.start_epoch, frozen.end_epoch) == (5.0, -1.0)  # an open end stays open
    assert composed.max_epochs == 6
    # the composed recipe is a plain recipe file again: absolute epochs, so no second shift
    again = Recipe.load(composed.to_yaml())
    assert again.modifiers == composed.modifiers and again.max_epochs == 6
    kept = Recipe.compose_staged(BASE, ADDITIONAL, keep_original_epochs=True)
    assert kept.stages[1].modifiers[0].start_epoch == 0.0 and kept.max_epochs == 4


def test_compose_staged_names_stages_as_sparseml_and_refuses_clashes():
    staged = Recipe.compose_staged(BASE, ADDITIONAL)
    three = Recipe.compose_staged(staged, BASE)
    assert [stage.name for stage in three.stages] == ["stage_0", "stage_1", "stage_3"]
    pre = Recipe.compose_staged(BASE, TWO_STAGES)
    assert [stage.name for stage in pre.stages] == ["pre_stage_0", "stage_0", "stage_1"]
    with pytest.raises(RecipeError, match="share stage names stage_0, stage_1"):
        Recipe.compose_staged(TWO_STAGES, TWO_STAGES)
    manager = Manager.compose_staged(Manager(BASE), ADDITIONAL)
    assert manager.max_epochs == 6 and manager.num_stages() == 2


def test_a_stage_after_a_step_based_stage_starts_where_it_ends():
    """Issue 17: a stage after a step-based one used to get offset 0 and overlap it."""
    steps = "training_modifiers:\n  - !EpochRangeModifier {start_step: 0, end_step: 50}\n"
    with pytest.raises(RecipeError, match="steps_per_epoch"):
        Recipe.compose_staged(steps, ADDITIONAL)
    composed = Recipe.compose_staged(steps, ADDITIONAL, steps_per_epoch=20)  # base ends at 2.5
    epoch_range = composed.stages[1].modifiers[0]
    assert (epoch_range.start_epoch, epoch_range.end_epoch) == (
        3.0,
        5.0,
    )  # SparseML: after ceil(2.5)
    assert composed.end_epoch_at(20) == 5.0
    step_after = Recipe.compose_staged(BASE, steps, steps_per_epoch=20)
    assert step_after.stages[1].modifiers[0].start_step == 80  # 4 epochs of 20 steps later
    assert step_after.end_epoch_at(20) == 6.5


def test_stage_names_must_be_unique():
    from sparseforge.recipe.recipe import Stage

    stage = Recipe.load(TWO_STAGES).stages[0]
    with pytest.raises(RecipeError, match="unique; repeated: stage_0"):
        Recipe([stage, Stage("stage_0", stage.groups)])


SCOPED = """
end_epoch: 100
pruning_stage:
  end_epoch_global: eval(end_epoch)
  end_epoch: 75
  later: eval(after * 2)
  after: 3
  pruning_modifiers:
    - !EpochRangeModifier {start_epoch: 0, end_epoch: eval(end_epoch)}
    - !SetLearningRateModifier {learning_rate: 0.1, start_epoch: eval(end_epoch_global - 95)}
"""


def test_stage_variables_are_read_in_file_order():
    """Issue 18.2: the global end_epoch was the only one defined when end_epoch_global was read."""
    recipe = Recipe.load(SCOPED)
    stage = recipe.stages[0]
    assert stage.variables == {"end_epoch_global": 100, "end_epoch": 75, "later": 6, "after": 3}
    epoch_range, set_lr = stage.modifiers
    assert epoch_range.end_epoch == 75.0  # the stage's own modifiers see the stage's value
    assert set_lr.start_epoch == 5.0
    # recipe_args set a name everywhere it is defined, as SparseML's update_recipe_variables does
    overridden = Recipe.load(SCOPED, {"end_epoch": 120}).stages[0]
    assert (
        overridden.variables["end_epoch_global"] == 120 and overridden.variables["end_epoch"] == 120
    )
    with pytest.raises(RecipeError, match="cycle: a -> b -> a"):
        Recipe.load(
            "s:\n  a: eval(b)\n  b: eval(a)\n  modifiers:\n    - !EpochRangeModifier {start_epoch: 0, end_epoch: 1}\n"
        )


def test_recipe_check_shows_resolved_stage_variables_and_absolute_spans(tmp_path, capsys):
    path = tmp_path / "scoped.yaml"
    path.write_text(SCOPED)
    assert main(["recipe", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "stage pruning_stage: epochs 0 -> 75" in out
    assert "variables: end_epoch_global=100, end_epoch=75, later=6, after=3" in out
    assert "stages hold absolute epochs" in out


def test_metadata_is_kept_and_written_back():
    recipe = Recipe.load(f"{METADATA_KEY}:\n  trained_by: me\n" + BASE)
    assert recipe.metadata == {"trained_by": "me"}
    assert Recipe.load(recipe.to_yaml()).metadata == {"trained_by": "me"}


def test_compose_staged_keeps_a_structural_base_modifier_open():
    """Ending a layer-pruning base at the base's end would bring the layers back on reload."""
    base = BASE + "  - !LayerPruningModifier {layers: ['0'], start_epoch: 1}\n"
    composed = Recipe.compose_staged(base, ADDITIONAL)
    layer = composed.stages[0].modifiers[2]
    assert layer.end_epoch == -1 and composed.stages[0].modifiers[1].end_epoch == 4.0
