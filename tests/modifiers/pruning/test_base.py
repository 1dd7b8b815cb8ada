"""Mask enforcement shared by every pruning modifier: masks never leak, state resumes exactly."""

import pytest
import torch

from sparseforge import Manager, ModelMatchError

GMP = """
pruning_modifiers:
  - !GMPruningModifier
    params: ['re:net\\.[02]\\.weight']
    init_sparsity: 0.2
    final_sparsity: 0.8
    start_epoch: 1
    end_epoch: 4
    update_frequency: 0.5
    leave_enabled: {leave}
    mask_type: {mask}
"""


class Net(torch.nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8)
        )

    def forward(self, x):
        return self.net(x)


def batch(step, micro=0):
    gen = torch.Generator().manual_seed(1000 * step + micro)
    return torch.randn(8, 16, generator=gen), torch.randn(8, 8, generator=gen)


def run(model, optimizer, manager, steps, start=0, accumulate=1, autocast=False, check=None):
    for step in range(start, start + steps):
        for micro in range(accumulate):
            x, y = batch(step, micro)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = torch.nn.functional.mse_loss(model(x).float(), y)
            loss = manager.loss_update(loss)
            (loss / accumulate).backward()
        optimizer.step()
        optimizer.zero_grad()
        if check:
            check(step)


def setup(recipe=GMP, leave=True, mask="unstructured", seed=0, spe=4, lr=0.05):
    model = Net(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    manager = Manager(recipe.format(leave=leave, mask=mask))
    wrapped = manager.modify(model, optimizer, steps_per_epoch=spe)
    return model, optimizer, wrapped, manager


@pytest.mark.parametrize("accumulate, autocast", [(1, False), (3, False), (2, True)])
def test_masked_weights_grads_and_moments_stay_zero(accumulate, autocast):
    model, optimizer, wrapped, manager = setup(mask="[1, 4]")
    mod = manager.modifiers[0]

    def check(step):
        for name, mask in mod.masks.items():
            param = model.get_parameter(name)
            assert not bool(param[~mask].any()), (
                f"step {step}: a pruned weight of {name} is non-zero"
            )
            for key in ("exp_avg", "exp_avg_sq"):
                assert not bool(optimizer.state[param][key][~mask].any()), (
                    f"step {step}: {key} leaks"
                )

    run(model, wrapped, manager, 24, accumulate=accumulate, autocast=autocast, check=check)
    for name in mod.param_names:
        param = model.get_parameter(name)
        assert float((param == 0).float().mean()) == pytest.approx(0.8, abs=0.02)
    assert mod.masks  # masks were installed


def test_mask_gradients_zeroes_pruned_gradients_before_the_step():
    """For loops that clip: after backward, `mask_gradients()` leaves live gradients untouched."""
    model, optimizer, wrapped, manager = setup()
    run(model, wrapped, manager, 6)  # masks installed at epoch 1 (step 4)
    x, y = batch(99)
    torch.nn.functional.mse_loss(model(x), y).backward()
    param = model.net[0].weight
    mask = manager.modifiers[0].masks["net.0.weight"]
    before = param.grad.clone()
    assert bool(before[~mask].any())  # backward does produce gradients for pruned weights
    manager.mask_gradients()
    assert not bool(param.grad[~mask].any())
    assert torch.equal(param.grad[mask], before[mask])


def test_moments_of_newly_pruned_weights_are_cleared():
    """Dense training builds Adam moments; when a mask arrives they are zeroed at once."""
    model, optimizer, wrapped, manager = setup(spe=4)
    run(model, wrapped, manager, 4)  # epoch 0..1: dense, moments everywhere
    param = model.net[0].weight
    assert bool((optimizer.state[param]["exp_avg"] != 0).all())
    run(model, wrapped, manager, 1, start=4)  # the start update at epoch 1
    mask = manager.modifiers[0].masks["net.0.weight"]
    assert not bool(optimizer.state[param]["exp_avg"][~mask].any())
    assert not bool(optimizer.state[param]["exp_avg_sq"][~mask].any())


def test_leave_enabled_false_releases_masks_at_end():
    model, optimizer, wrapped, manager = setup(leave=False)
    run(model, wrapped, manager, 17)  # through the end update at epoch 4
    weight = model.net[0].weight
    assert float((weight == 0).float().mean()) == pytest.approx(0.8, abs=0.01)
    run(model, wrapped, manager, 4, start=17)
    assert float((weight == 0).float().mean()) < 0.4  # weights regrow once masks are released

    model, optimizer, wrapped, manager = setup(leave=True)
    run(model, wrapped, manager, 21)
    assert float((model.net[0].weight == 0).float().mean()) == pytest.approx(0.8, abs=0.01)


def test_masks_follow_parameter_names_through_module_swaps():
    """A module replaced by a wrapper holding the same Parameter keeps its mask (quantization)."""

    class Wrapped(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.weight, self.bias = inner.weight, inner.bias

        def forward(self, x):
            return torch.nn.functional.linear(x, self.weight, self.bias)

    model, optimizer, wrapped, manager = setup()
    run(model, wrapped, manager, 8)
    model.net[0] = Wrapped(model.net[0])
    run(model, wrapped, manager, 13, start=8)
    mask = manager.modifiers[0].masks["net.0.weight"]
    assert not bool(model.net[0].weight[~mask].any())
    assert float((~mask).float().mean()) == pytest.approx(0.8, abs=0.01)


@pytest.mark.parametrize("kind", ["GMPruningModifier", "MovementPruningModifier"])
def test_state_dict_resume_is_bit_identical(kind):
    recipe = GMP.replace("GMPruningModifier", kind)
    model, optimizer, wrapped, manager = setup(recipe)
    run(model, wrapped, manager, 22)
    reference = {k: v.clone() for k, v in model.state_dict().items()}

    model, optimizer, wrapped, manager = setup(recipe)
    run(model, wrapped, manager, 9)  # stop mid-schedule
    saved = {
        "model": {k: v.clone() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "manager": manager.state_dict(),
    }
    del model, optimizer, wrapped, manager
    model2, optimizer2, wrapped2, manager2 = setup(recipe, seed=123)
    model2.load_state_dict(saved["model"])
    optimizer2.load_state_dict(saved["optimizer"])
    manager2.load_state_dict(saved["manager"])
    assert set(manager2.modifiers[0].masks) == {"net.0.weight", "net.2.weight"}
    run(model2, wrapped2, manager2, 13, start=9)
    for key, value in model2.state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_logs_report_measured_sparsity_and_totals():
    model, optimizer, wrapped, manager = setup()
    run(model, wrapped, manager, 17)
    logs = manager.logs()
    assert logs["sparsity/net.0.weight"] == round(0.8 * 512) / 512
    assert logs["sparsity/net.2.weight"] == round(0.8 * 256) / 256
    assert logs["sparsity/total_pruned_params"] == round(0.8 * 512) + round(0.8 * 256)
    status = manager.modifiers[0].sparsity_status()
    assert status["net.0.weight"]["target"] == pytest.approx(0.8)
    assert status["net.0.weight"]["measured"] == round(0.8 * 512) / 512


def test_unmatched_pattern_fails_at_modify():
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    manager = Manager(GMP.format(leave=True, mask="unstructured").replace("net\\.[02]", "encoder"))
    with pytest.raises(ModelMatchError, match="matches no parameter"):
        manager.modify(model, optimizer, steps_per_epoch=4)


def test_finalize_applies_and_stops_enforcing():
    model, optimizer, wrapped, manager = setup()
    run(model, wrapped, manager, 10)
    manager.finalize(model)
    assert manager.modifiers[0].masks == {}
    assert float((model.net[0].weight == 0).float().mean()) > 0.2
