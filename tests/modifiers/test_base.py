"""The scheduling core (modifiers/base.py): bounds, update frequency, lifecycle guards, specs."""

import pytest
import torch

from sparseforge import RecipeError, SparseforgeError
from sparseforge.modifiers.base import Modifier, TrainingState, UpdatingModifier
from sparseforge.modifiers.training import EpochRangeModifier, LearningRateFunctionModifier
from sparseforge.recipe.timeline import RunSchedule


class Recorder(UpdatingModifier):
    """Records which hook ran at which epoch."""

    def model_post_init(self, context):  # noqa: D102 - pydantic hook
        super().model_post_init(context)
        self._events = []

    def on_start(self, state):
        self._events.append(("start", state.epoch))

    def on_update(self, state):
        self._events.append(("update", state.epoch))

    def on_end(self, state):
        self._events.append(("end", state.epoch))

    def on_finalize(self, state):
        self._events.append(("finalize", state.epoch))


def run(mod, steps, spe=4):
    state = TrainingState(model=torch.nn.Linear(1, 1), optimizer=None, steps_per_epoch=spe)
    mod.initialize(state)
    for step in range(steps):
        state.step = step
        mod.update(state)
    return state


def test_start_updates_by_frequency_and_end_at_exact_epochs():
    mod = Recorder(start_epoch=1.0, end_epoch=2.0, update_frequency=0.5)
    run(mod, 12)
    assert mod._events == [
        ("start", 1.0),
        ("update", 1.0),
        ("update", 1.5),
        ("update", 2.0),
        ("end", 2.0),
    ]
    assert mod.started and mod.ended and not mod.active


def test_minus_one_start_is_immediate_and_minus_one_end_never_comes():
    mod = Recorder()  # start -1, end -1, update every step
    run(mod, 3)
    assert mod._events == [("start", 0.0), ("update", 0.0), ("update", 0.25), ("update", 0.5)]
    assert mod.active and not mod.ended


def test_step_bounds_are_resolved_by_the_run_schedule():
    mod = Recorder(start_step=2, end_step=6, update_every_steps=2)
    with pytest.raises(RecipeError, match="steps_per_epoch"):
        _ = mod.scheduled_start  # unknown until the run's steps_per_epoch is
    run(mod, 8, spe=4)
    assert (mod.scheduled_start, mod.scheduled_end) == (0.5, 1.5)
    assert mod._events == [
        ("start", 0.5),
        ("update", 0.5),
        ("update", 1.0),
        ("update", 1.5),
        ("end", 1.5),
    ]
    assert mod.epoch_bounds() == [0.5, 1.5]


def test_epoch_bounds_without_a_schedule_refuse_steps_instead_of_skipping_them():
    assert EpochRangeModifier(start_epoch=0, end_epoch=3).epoch_bounds() == [0.0, 3.0]
    with pytest.raises(RecipeError, match="end_step: 50.*steps_per_epoch"):
        EpochRangeModifier(start_epoch=0, end_step=50).epoch_bounds()
    mod = EpochRangeModifier(start_step=0, end_step=50)
    mod.bind_schedule(RunSchedule(20))
    assert mod.epoch_bounds() == [0.0, 2.5]


def test_schedule_fields_are_validated():
    with pytest.raises(ValueError, match="either start_epoch or start_step"):
        EpochRangeModifier(start_epoch=1, start_step=3)
    with pytest.raises(ValueError, match="before start_epoch"):
        EpochRangeModifier(start_epoch=3, end_epoch=1)
    with pytest.raises(ValueError, match="before start_step"):
        EpochRangeModifier(start_step=30, end_step=10)
    with pytest.raises(ValueError, match="update_frequency must be > 0"):
        Recorder(update_frequency=0)


def test_initializing_or_finalizing_twice_is_an_error():
    mod = Recorder(start_epoch=0, end_epoch=1)
    state = TrainingState(model=torch.nn.Linear(1, 1), optimizer=None, steps_per_epoch=2)
    with pytest.raises(SparseforgeError, match="update\\(\\) before initialize"):
        mod.update(state)
    with pytest.raises(SparseforgeError, match="never initialized"):
        mod.finalize(state)
    mod.initialize(state)
    with pytest.raises(SparseforgeError, match="already initialized"):
        mod.initialize(state)
    mod.finalize(state)
    assert mod.finalized and mod._events == [("finalize", 0.0)]
    with pytest.raises(SparseforgeError, match="already finalized"):
        mod.finalize(state)
    with pytest.raises(SparseforgeError, match="was finalized"):
        mod.initialize(state)


def test_a_spec_is_immutable_and_never_runs():
    spec = EpochRangeModifier(start_epoch=0, end_epoch=2).as_spec()
    assert spec.is_spec
    with pytest.raises(RecipeError, match="immutable"):
        spec.end_epoch = 5
    with pytest.raises(SparseforgeError, match="Manager\\(recipe\\) makes the instances"):
        spec.initialize(
            TrainingState(model=torch.nn.Linear(1, 1), optimizer=None, steps_per_epoch=1)
        )
    live = spec.instantiate()
    assert not live.is_spec and live == spec and live is not spec
    live.end_epoch = 5  # a manager's own instance may be changed
    assert spec.end_epoch == 2


def test_positional_arguments_in_sparsemls_order():
    assert EpochRangeModifier(0.0, 10.0) == EpochRangeModifier(start_epoch=0.0, end_epoch=10.0)
    lr = LearningRateFunctionModifier("linear", 0.1, 0.01, 0.0, 5.0)
    assert (lr.lr_func, lr.init_lr, lr.final_lr, lr.start_epoch, lr.end_epoch) == (
        "linear",
        0.1,
        0.01,
        0.0,
        5.0,
    )
    with pytest.raises(TypeError, match="takes 2 positional"):
        EpochRangeModifier(0.0, 1.0, 2.0)
    with pytest.raises(TypeError, match="two values for 'start_epoch'"):
        EpochRangeModifier(0.0, start_epoch=1.0)
    with pytest.raises(TypeError, match="takes 0 positional"):
        Recorder(1.0)


def test_str_is_recipe_yaml_and_load_list_reads_it_back():
    mod = LearningRateFunctionModifier(
        lr_func="cosine", init_lr=0.1, final_lr=0.0, start_epoch=1, end_epoch=4
    )
    text = str(mod)
    assert text.startswith("- !LearningRateFunctionModifier") and "init_lr: 0.1" in text
    (again,) = Modifier.load_list(text)
    assert again == mod and not again.is_spec
    assert Modifier.load_obj(text) == mod
    with pytest.raises(RecipeError, match="one modifier"):
        Modifier.load_obj(text + str(EpochRangeModifier(0, 1)))


def test_shifted_moves_every_point_in_time_and_keeps_minus_one_ends():
    mod = Recorder(start_epoch=-1, end_epoch=-1)
    assert mod.shifted(5, None) == {"start_epoch": 5.0, "end_epoch": -1.0}
    mod = EpochRangeModifier(start_epoch=1, end_epoch=3)
    assert mod.shifted(5, None) == {"start_epoch": 6.0, "end_epoch": 8.0}
    steps = EpochRangeModifier(start_step=0, end_step=20)
    assert steps.shifted(2, 40) == {"start_step": 40, "end_step": 60}
    with pytest.raises(RecipeError, match="needs steps_per_epoch"):
        steps.shifted(2, None)


def test_state_dict_restores_the_schedule_position():
    mod = Recorder(start_epoch=0, end_epoch=2, update_frequency=1.0)
    run(mod, 5, spe=4)  # started at 0, updated at 1.0
    saved = mod.state_dict()
    other = Recorder(start_epoch=0, end_epoch=2, update_frequency=1.0)
    state = TrainingState(model=torch.nn.Linear(1, 1), optimizer=None, steps_per_epoch=4, step=5)
    other.initialize(state)
    other.load_state_dict(saved)
    assert other.started and other._rt.last_update_epoch == 1.0
    for step in range(5, 9):
        state.step = step
        other.update(state)
    assert other._events == [("update", 2.0), ("end", 2.0)]
