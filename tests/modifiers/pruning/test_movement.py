"""Movement pruning: scores accumulate -w * grad before each step and decide the masks."""

import pytest
import torch

from sparseforge import Manager

RECIPE = """
pruning_modifiers:
  - !MovementPruningModifier
    params: ['0.weight']
    init_sparsity: 0.3
    final_sparsity: 0.6
    start_epoch: 1
    end_epoch: 2
    update_frequency: 0.5
    log_types: __ALL__
"""


def test_scores_accumulate_and_choose_the_mask():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3))
    manager = Manager(RECIPE)
    optimizer = manager.modify(
        model, torch.optim.SGD(model.parameters(), lr=0.1), steps_per_epoch=4
    )
    mod = manager.modifiers[0]
    expected = torch.zeros(12, 8)
    gen = torch.Generator().manual_seed(1)
    for step in range(5):
        loss = model(torch.randn(6, 8, generator=gen)).pow(2).sum()
        loss.backward()
        grad, weight = model[0].weight.grad.clone(), model[0].weight.detach().clone()
        expected += -0.01 * grad * weight
        if step == 4:  # the start update (epoch 1) scores before masking: it sees this step too
            order = torch.argsort(expected.reshape(-1), stable=True)
        optimizer.step()
        optimizer.zero_grad()
        if step < 4:
            torch.testing.assert_close(mod._scores["0.weight"], expected, rtol=1e-5, atol=1e-8)
            assert not mod.masks
    mask = mod.masks["0.weight"].reshape(-1)
    pruned = set(order[: round(0.3 * 96)].tolist())
    assert {i for i in range(96) if not mask[i]} == pruned
    assert float((model[0].weight == 0).float().mean()) == pytest.approx(round(0.3 * 96) / 96)


def test_movement_reaches_final_and_keeps_it():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3))
    manager = Manager(RECIPE.replace("final_sparsity: 0.6", "final_sparsity: 0.75"))
    optimizer = manager.modify(
        model, torch.optim.AdamW(model.parameters(), lr=0.05), steps_per_epoch=4
    )
    gen = torch.Generator().manual_seed(2)
    for _ in range(14):
        model(torch.randn(6, 8, generator=gen)).pow(2).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert int((model[0].weight == 0).sum()) == round(0.75 * 96)
