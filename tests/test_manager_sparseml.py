"""SparseML's Python API on sparseforge's manager and modifiers (issue 18, items 6-9).

Each test states what SparseML does (sparseml/pytorch/optim/manager.py, optimizer.py and
sparsification/modifier.py) and checks sparseforge does the same.
"""

import math

import pytest
import torch

from sparseforge import Manager, ScheduledModifierManager, ScheduledOptimizer
from sparseforge.errors import SparseforgeError
from sparseforge.modifiers.base import Modifier
from sparseforge.modifiers.pruning import ConstantPruningModifier, GMPruningModifier
from sparseforge.modifiers.training import (
    EpochRangeModifier,
    LearningRateFunctionModifier,
    SetLearningRateModifier,
    TrainableParamsModifier,
)

FREEZE = """
training_modifiers:
  - !EpochRangeModifier {start_epoch: 0, end_epoch: 2}
  - !TrainableParamsModifier {params: ['0.weight'], trainable: false, start_epoch: 0, end_epoch: 1}
"""
GMP = """
training_modifiers:
  - !EpochRangeModifier {start_epoch: 0, end_epoch: 4}
  - !LearningRateFunctionModifier {start_epoch: 0, end_epoch: 4, lr_func: linear, init_lr: 0.1, final_lr: 0.02}
pruning_modifiers:
  - !GMPruningModifier
    params: ['0.weight', '2.weight']
    init_sparsity: 0.1
    final_sparsity: 0.5
    start_epoch: 0
    end_epoch: 2
    update_frequency: 0.5
"""


def make(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def sparseml_loop(model, optimizer, steps, start=0, loss_update=None):
    """SparseML's usual loop: forward, backward, optimizer.step(); no manager call of its own."""
    gen = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(8, 4, generator=gen), torch.randint(0, 2, (8,), generator=gen))
        for _ in range(start + steps)
    ]
    for x, y in batches[start:]:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        if loss_update is not None:
            loss = loss_update(loss)
        loss.backward()
        optimizer.step()


def zeros(tensor):
    return float((tensor == 0).float().mean())


# ----- 6: what is due at modify() is applied there ------------------------------------------------
def test_modifiers_due_at_epoch_zero_apply_inside_modify():
    model, optimizer = make()
    frozen_before = model[0].weight.detach().clone()
    wrapped = Manager(FREEZE).modify(model, optimizer, steps_per_epoch=4)
    assert not model[0].weight.requires_grad  # frozen before the first step, as in SparseML
    sparseml_loop(model, wrapped, 1)
    assert torch.equal(model[0].weight, frozen_before)
    gmp = Manager(GMP)
    model, optimizer = make()
    gmp.modify(model, optimizer, 4)
    assert zeros(model[0].weight) == pytest.approx(0.1, abs=0.02)  # init_sparsity is in place
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)


# ----- 7: resume -------------------------------------------------------------------------------
def test_modify_with_an_epoch_starts_the_schedule_there():
    model, optimizer = make()
    manager = Manager(GMP)
    manager.modify(model, optimizer, 4, epoch=3.0)
    assert manager.epoch == 3.0 and manager.step == 12
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 + 3 / 4 * (0.02 - 0.1))
    assert zeros(model[0].weight) == pytest.approx(0.5, abs=0.02)  # GMP's window has passed: final


def test_load_state_dict_reapplies_masks_to_the_weights_at_once():
    model, optimizer = make()
    manager = Manager(GMP)
    sparseml_loop(model, manager.modify(model, optimizer, 4), 6)
    saved, masks = (
        manager.state_dict(),
        {k: v.clone() for k, v in manager.modifiers[2].masks.items()},
    )
    resumed, resumed_optimizer = make(seed=5)  # dense weights: nothing pruned yet
    other = Manager(GMP)
    other.modify(resumed, resumed_optimizer, 4)
    other.load_state_dict(saved)
    for name, keep in masks.items():
        weight = resumed.get_parameter(name)
        assert torch.all(weight[~keep] == 0), name  # before any step or forward pass
    assert other.step == 6


def test_resume_after_a_window_closes_what_modify_opened():
    model, optimizer = make()
    first = Manager(FREEZE)
    sparseml_loop(model, first.modify(model, optimizer, 2), 3)  # past the freeze window (epoch 1)
    assert model[0].weight.requires_grad
    resumed, resumed_optimizer = make()
    second = Manager(FREEZE)
    second.modify(resumed, resumed_optimizer, 2)
    assert not resumed[0].weight.requires_grad  # due at epoch 0...
    second.load_state_dict(first.state_dict())
    assert resumed[0].weight.requires_grad  # ...but the checkpoint is past its end


def test_initialize_takes_sparsemls_epoch_argument():
    model, optimizer = make()
    manager = Manager(FREEZE)
    state = manager.initialize(model, 0.0)  # initialize(module, epoch, loggers)
    assert state.optimizer is None and manager.epoch == 0.0
    assert not model[0].weight.requires_grad
    wrapped = manager.modify(model, optimizer, 4)  # SparseML: modify() after initialize() attaches
    assert manager.state.optimizer is optimizer and manager.schedule.steps_per_epoch == 4
    sparseml_loop(model, wrapped, 5)  # the fifth step begins at epoch 1, where the freeze ends
    assert manager.epoch == 1.25 and model[0].weight.requires_grad


# ----- 8: SparseML's signatures ---------------------------------------------------------------
def test_manager_calls_with_module_optimizer_epoch_and_steps_per_epoch():
    model, optimizer = make()
    manager = Manager(GMP)
    manager.initialize(model, epoch=0.0, loggers=None)
    spe = 4
    for step in range(3 * spe):
        epoch = step / spe
        x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
        optimizer.zero_grad()
        manager.update(model, optimizer, epoch, spe)
        loss = manager.loss_update(
            torch.nn.functional.cross_entropy(model(x), y), model, optimizer, epoch, spe
        )
        loss.backward()
        manager.optimizer_pre_step(model, optimizer, epoch, spe)
        optimizer.step()
        manager.optimizer_post_step(model, optimizer, epoch, spe)
    assert manager.state.optimizer is optimizer and manager.schedule.steps_per_epoch == spe
    assert manager.step == 3 * spe
    assert zeros(model[0].weight) == pytest.approx(0.5, abs=0.02)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 + (11 / 4) / 4 * (0.02 - 0.1))


def test_scheduled_optimizer_with_sparsemls_arguments():
    model, optimizer = make()
    manager = Manager(GMP)
    wrapped = ScheduledOptimizer(optimizer, model, manager, steps_per_epoch=4, loggers=None)
    assert manager.state.model is model and manager.schedule.steps_per_epoch == 4
    sparseml_loop(model, wrapped, 8, loss_update=wrapped.loss_update)
    assert manager.step == 8 and zeros(model[0].weight) == pytest.approx(0.5, abs=0.02)
    with pytest.raises(TypeError, match="ScheduledOptimizer"):
        ScheduledOptimizer(optimizer, model)


def test_apply_is_one_shot_to_the_end_of_the_recipe():
    model, _ = make()
    manager = Manager(GMP)
    manager.apply(model)  # epoch=inf
    assert zeros(model[0].weight) == pytest.approx(0.5, abs=0.02)
    assert manager.modifiers[2].ended and manager.modifiers[2].finalized


def test_save_str_staging_and_iteration(tmp_path):
    manager = ScheduledModifierManager.from_yaml(GMP, metadata={"run": "a"})
    assert manager.metadata == {"run": "a"}
    assert Manager(str(manager)).recipe.modifiers == manager.recipe.modifiers  # str() is the YAML
    path = manager.save(tmp_path / "recipe.yaml")
    assert Manager(str(path)).recipe.modifiers == manager.recipe.modifiers
    assert list(manager.iter_modifiers()) == manager.modifiers and manager.num_stages() == 1
    composed = ScheduledModifierManager.compose_staged(
        manager, FREEZE, save_path=tmp_path / "both.yaml"
    )
    assert composed.num_stages() == 2 and composed.max_epochs == 6
    assert Manager(str(tmp_path / "both.yaml")).max_epochs == 6
    model, _ = make()
    manager.apply_structure(model, epoch=math.inf)  # SparseML's signature: nothing to rebuild here


def test_from_yaml_add_modifiers_runs_the_given_objects():
    extra = SetLearningRateModifier(0.05, start_epoch=1.0)
    manager = ScheduledModifierManager.from_yaml(FREEZE, add_modifiers=[extra])
    assert manager.modifiers[-1] is extra and manager.recipe.modifiers[-1] == extra
    model, optimizer = make()
    sparseml_loop(model, manager.modify(model, optimizer, 2), 3)
    assert extra.applied_learning_rate == 0.05


# ----- 9: modifiers built in Python --------------------------------------------------------------
def test_python_built_modifiers_are_the_ones_that_run():
    lr = LearningRateFunctionModifier("linear", 0.1, 0.01, 0.0, 2.0)
    prune = GMPruningModifier(0.0, 0.5, 0.0, 1.0, 0.5, ["0.weight"])  # SparseML's positional order
    assert (prune.final_sparsity, prune.update_frequency, prune.params) == (0.5, 0.5, ["0.weight"])
    constant = ConstantPruningModifier("__ALL_PRUNABLE__", 0.0, 3.0)
    assert (constant.params, constant.end_epoch) == ("__ALL_PRUNABLE__", 3.0)
    mods = [EpochRangeModifier(0.0, 2.0), lr, prune, TrainableParamsModifier(["2.bias"], False)]
    manager = ScheduledModifierManager(mods)
    assert manager.modifiers == mods and all(
        a is b for a, b in zip(manager.modifiers, mods, strict=True)
    )
    assert lr.applied_learning_rate is None and prune.applied_sparsity is None
    model, optimizer = make()
    sparseml_loop(model, manager.modify(model, optimizer, 4), 5)
    assert lr.applied_learning_rate == pytest.approx(0.1 + (4 / 4) / 2 * (0.01 - 0.1))
    assert prune.applied_sparsity == pytest.approx(0.5)
    with pytest.raises(SparseforgeError, match="already initialized"):
        Manager(mods).modify(*make(), 4)  # the objects belong to the first run


def test_load_list_and_str_round_trip_a_recipe():
    mods = Modifier.load_list(GMP)
    assert [type(m) for m in mods] == [
        EpochRangeModifier,
        LearningRateFunctionModifier,
        GMPruningModifier,
    ]
    text = "".join(str(mod) for mod in mods)
    assert Modifier.load_list(text) == mods
