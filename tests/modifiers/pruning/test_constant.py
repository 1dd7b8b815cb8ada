"""ConstantPruningModifier: a pre-pruned model keeps every zero while it trains (sparse transfer)."""

import torch
from conftest import make_tiny_model

from sparseforge import Manager
from sparseforge.modifiers.selection import prunable_parameter_names

RECIPE = """
training_modifiers:
  - !EpochRangeModifier {start_epoch: 0, end_epoch: 10}
pruning_modifiers:
  - !ConstantPruningModifier
    params: __ALL_PRUNABLE__
    start_epoch: 0.0
    end_epoch: END
"""


def pre_pruned_model(seed=0):
    model = make_tiny_model("text-classification", seed=seed).train()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in prunable_parameter_names(model):
            if "embeddings" in name:
                continue
            weight = model.get_parameter(name)
            weight.mul_(torch.rand(weight.shape, generator=gen) > 0.6)  # ~60% zeros
    return model


def train(model, optimizer, steps, start=0):
    gen = torch.Generator().manual_seed(start)
    for _ in range(steps):
        ids = torch.randint(5, 100, (2, 8), generator=gen)
        out = model(input_ids=ids, labels=torch.randint(0, 2, (2,), generator=gen))
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def test_every_zero_survives_100_adamw_steps():
    model = pre_pruned_model()
    zeros_before = {n: (p == 0).clone() for n, p in model.named_parameters() if p.dim() == 2}
    values_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    manager = Manager(RECIPE.replace("END", "-1"))
    optimizer = manager.modify(
        model, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01), steps_per_epoch=10
    )
    train(model, optimizer, 100)
    for name, zeros in zeros_before.items():
        param = model.get_parameter(name)
        assert not bool(param[zeros].any()), f"{name}: a pruned weight came back"
        if zeros.any() and not zeros.all():
            assert not torch.equal(param, values_before[name]), f"{name} did not train"
    mod = manager.modifiers[-1]
    assert set(mod.param_names) == set(prunable_parameter_names(model))
    assert manager.logs()["sparsity/bert.encoder.layer.0.output.dense.weight"] > 0.55


def test_masks_released_at_end_epoch_and_nothing_to_rebuild():
    model = pre_pruned_model()
    weight = model.bert.encoder.layer[0].intermediate.dense.weight
    zeros = (weight == 0).clone()
    manager = Manager(RECIPE.replace("END", "2"))
    optimizer = manager.modify(
        model, torch.optim.AdamW(model.parameters(), lr=1e-2), steps_per_epoch=5
    )
    train(model, optimizer, 11)  # the end update is at step 10; that step is still masked
    assert not bool(weight[zeros].any())
    train(model, optimizer, 5, start=11)
    assert bool(weight[zeros].any())  # released: SparseML's ConstantPruning does not leave masks on
    fresh = make_tiny_model("text-classification")
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    manager.apply_structure(fresh)  # zeros live in the weights: nothing to rebuild
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())


def test_constant_masks_resume_from_state_dict():
    model = pre_pruned_model()
    manager = Manager(RECIPE.replace("END", "-1"))
    optimizer = manager.modify(
        model, torch.optim.AdamW(model.parameters(), lr=1e-2), steps_per_epoch=10
    )
    train(model, optimizer, 3)
    saved = manager.state_dict()
    zeros = {n: ~m for n, m in manager.modifiers[-1].masks.items()}

    model2 = pre_pruned_model(seed=1)  # different zeros: the saved masks must win
    model2.load_state_dict(model.state_dict())
    manager2 = Manager(RECIPE.replace("END", "-1"))
    optimizer2 = manager2.modify(
        model2, torch.optim.AdamW(model2.parameters(), lr=1e-2), steps_per_epoch=10
    )
    manager2.load_state_dict(saved)
    train(model2, optimizer2, 20, start=3)
    for name, pruned in zeros.items():
        assert not bool(model2.get_parameter(name)[pruned].any())
