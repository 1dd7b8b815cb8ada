"""SetParamModifier, GradualParamModifier, SparsificationLoggingModifier (SparseML's definitions)
and LearningRateFunctionModifier's accepted-and-ignored update_frequency."""

from __future__ import annotations

import pytest
import torch

from sparseforge import Manager, ModelMatchError, RecipeError
from sparseforge.modifiers.pruning.schedule import interpolate


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.first = torch.nn.Linear(4, 6)
        self.second = torch.nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.second(torch.relu(self.first(x)))


def run(model: torch.nn.Module, recipe: str, steps: int, steps_per_epoch: int = 2, lr: float = 0.0):
    """Steps of a plain SparseML-style loop; yields (epoch after the step, manager)."""
    manager = Manager(recipe)
    optimizer = manager.modify(model, torch.optim.SGD(model.parameters(), lr=lr), steps_per_epoch)
    for _ in range(steps):
        model(torch.ones(3, 4)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        yield manager.epoch, manager


def test_set_param_sets_values_at_start_epoch():
    model = Net()
    recipe = """
modifiers:
  - !SetParamModifier
      params: ['re:.*bias']
      val: 0.5
      start_epoch: 1.0
"""
    seen = []
    for epoch, _ in run(model, recipe, steps=4):
        seen.append(
            (epoch, bool((model.first.bias == 0.5).all()), bool((model.second.bias == 0.5).all()))
        )
    assert seen[0] == (0.5, False, False)
    assert all(first and second for epoch, first, second in seen if epoch > 1.0)
    assert torch.equal(model.second.weight, Net().second.weight)  # weights untouched


def test_set_param_nested_list_shape_checked_before_training():
    recipe = "modifiers:\n  - !SetParamModifier\n      params: [second.bias]\n      val: {val}\n"
    model = Net()
    for _ in run(model, recipe.format(val="[1.0, -1.0]"), steps=1):
        pass
    assert model.second.bias.tolist() == [1.0, -1.0]
    with pytest.raises(ModelMatchError, match=r"shape \(3,\) does not fit parameter second.bias"):
        next(run(Net(), recipe.format(val="[1.0, 2.0, 3.0]"), steps=1))
    with pytest.raises(RecipeError, match="end_epoch is not used"):
        Manager(recipe.format(val=1.0).replace("val: 1.0", "val: 1.0\n      end_epoch: 3.0"))


def test_params_strict_false_skips_patterns_that_match_nothing():
    recipe = """
modifiers:
  - !SetParamModifier
      params: [first.bias, nothing.here]
      val: 0.25
      params_strict: false
      start_epoch: 0.0
"""
    model = Net()
    for _ in run(model, recipe, steps=1):
        pass
    assert bool((model.first.bias == 0.25).all())
    with pytest.raises(ModelMatchError, match="nothing.here"):
        next(run(Net(), recipe.replace("params_strict: false", "params_strict: true"), steps=1))


@pytest.mark.parametrize("inter_func", ["linear", "cubic", "inverse_cubic"])
def test_gradual_param_follows_its_curve(inter_func):
    recipe = f"""
modifiers:
  - !GradualParamModifier
      params: [second.bias]
      init_val: [0.0, 10.0]
      final_val: [1.0, 20.0]
      inter_func: {inter_func}
      start_epoch: 0.0
      end_epoch: 2.0
      update_frequency: 0.5
"""
    model = Net()
    values = []
    for epoch, _ in run(model, recipe, steps=6, steps_per_epoch=4):
        values.append((epoch, model.second.bias.tolist()))
    # the update before step k happens at epoch (k-1)/4; updates every 0.5 epoch
    update_epochs = [0.0, 0.0, 0.5, 0.5, 1.0, 1.0]
    for (_, got), at in zip(values, update_epochs, strict=True):
        fraction = interpolate(at, 0.0, 2.0, 0.0, 1.0, inter_func)
        assert got == pytest.approx([fraction, 10.0 + 10.0 * fraction])
    assert interpolate(1.0, 0.0, 2.0, 0.0, 1.0, "cubic") == pytest.approx(1 - 0.5**3)
    assert interpolate(1.0, 0.0, 2.0, 0.0, 1.0, "inverse_cubic") == pytest.approx(
        1 - 0.5 ** (1 / 3)
    )


def test_gradual_param_needs_an_end_and_equal_shapes():
    base = "modifiers:\n  - !GradualParamModifier\n      params: [x]\n      init_val: 0.0\n"
    with pytest.raises(RecipeError, match="end_epoch"):
        Manager(base + "      final_val: 1.0\n      start_epoch: 0.0\n")
    with pytest.raises(RecipeError, match="must match final_val shape"):
        Manager(
            base + "      final_val: [1.0, 2.0]\n      start_epoch: 0.0\n      end_epoch: 1.0\n"
        )


def test_sparsification_logging_reports_sparsity():
    model = Net()
    with torch.no_grad():
        model.first.weight[:3] = 0.0  # 12 of 24 weights
    recipe = "modifiers:\n  - !SparsificationLoggingModifier\n      start_epoch: 0.0\n"
    logs = [dict(manager.state.logs) for _, manager in run(model, recipe, steps=1)]
    assert logs[0]["sparsification/sparsity/first.weight"] == 0.5
    assert logs[0]["sparsification/sparsity/second.weight"] == 0.0
    assert logs[0]["sparsification/sparsity/total"] == pytest.approx(12 / 36)
    assert logs[0]["sparsification/quantized_modules"] == 0.0


def lr_history(update_frequency: str) -> list[float]:
    recipe = f"""
modifiers:
  - !LearningRateFunctionModifier
      lr_func: linear
      init_lr: 0.1
      final_lr: 0.0
      start_epoch: 0.0
      end_epoch: 2.0
      {update_frequency}
"""
    model = Net()
    manager = Manager(recipe)
    optimizer = manager.modify(model, torch.optim.SGD(model.parameters(), lr=1.0), 4)
    history = []
    for _ in range(8):
        optimizer.step()
        history.append(optimizer.param_groups[0]["lr"])
    return history


def test_lr_function_accepts_and_ignores_update_frequency():
    every_step = lr_history("")
    assert len(set(every_step)) == 8  # the LR changes at every step
    assert lr_history("update_frequency: 0.5") == every_step
