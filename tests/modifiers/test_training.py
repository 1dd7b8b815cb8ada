"""Training modifiers give SparseML's learning rates, weight decay and trainable flags."""

import math

import pytest
import torch

from sparseforge import Manager, ModelMatchError, Recipe

SPE = 7  # steps per epoch: odd on purpose, so epochs fall between steps


def run_lrs(recipe_text, steps, spe=SPE, base_lr=1.0):
    """Learning rate in effect for each optimizer step 0..steps-1 of a manager-driven loop."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=base_lr)
    manager = Manager.from_recipe(recipe_text)
    wrapped = manager.modify(model, optimizer, spe)
    lrs = []
    for _ in range(steps):
        manager.update()  # what step() does first; lets us read the LR used by this step
        lrs.append(optimizer.param_groups[0]["lr"])
        wrapped.step()
    return lrs


def lr_recipe(**fields):
    body = ", ".join(f"{k}: {v}" for k, v in fields.items())
    return f"training_modifiers:\n  - !LearningRateFunctionModifier {{{body}}}\n"


def test_linear_matches_sparseml_formula():
    lrs = run_lrs(
        lr_recipe(lr_func="linear", start_epoch=2, end_epoch=10, init_lr=0.1, final_lr=0.001),
        12 * SPE,
    )
    for step, lr in enumerate(lrs):
        epoch = step / SPE
        if epoch < 2:
            expected = 1.0  # untouched before start
        elif epoch >= 10:
            expected = 0.001
        else:
            expected = 0.1 + (epoch - 2) / 8 * (0.001 - 0.1)
        assert lr == pytest.approx(expected, abs=1e-7), step


@pytest.mark.parametrize(("init", "final"), [(0.1, 0.01), (0.01, 0.1)])
def test_cosine_matches_sparseml_formula(init, final):
    lrs = run_lrs(
        lr_recipe(lr_func="cosine", start_epoch=0, end_epoch=5, init_lr=init, final_lr=final),
        6 * SPE,
    )
    for step, lr in enumerate(lrs):
        x = min(step / SPE, 5.0) / 5
        if final < init:
            expected = math.cos(x * math.pi) * (init - final) / 2 + (init - final) / 2 + final
        else:
            expected = (
                math.cos(x * math.pi + math.pi) * (final - init) / 2 + (final - init) / 2 + init
            )
        assert lr == pytest.approx(expected, abs=1e-7), step
    assert lrs[0] == pytest.approx(init) and lrs[-1] == pytest.approx(final)


def test_cyclic_linear_restarts_each_cycle():
    lrs = run_lrs(
        lr_recipe(
            lr_func="cyclic_linear",
            start_epoch=0,
            end_epoch=2,
            init_lr=0.1,
            final_lr=0.0,
            cycle_epochs=0.5,
        ),
        20,
        spe=10,
    )
    # cycle of 5 steps: lr = 0.1 - (step % 5) / 4 * 0.1
    assert lrs[:8] == pytest.approx([0.1, 0.075, 0.05, 0.025, 0.0, 0.1, 0.075, 0.05], abs=1e-7)
    assert lrs[19] == pytest.approx(0.0, abs=1e-7)


def torch_reference(make_scheduler, start_step, end_step, total, init_lr, epoch_stepped=None):
    """LRs of a real torch scheduler stepped the way SparseML steps it (one step per optimizer step
    from start_step, frozen from end_step on)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=init_lr)
    scheduler = None
    lrs = []
    for step in range(total):
        if step == start_step:
            scheduler = make_scheduler(opt)
        elif scheduler is not None and (end_step is None or step < end_step):
            if epoch_stepped is not None:
                scheduler.step(epoch_stepped(step))
            else:
                opt.step()
                scheduler.step()
        lrs.append(opt.param_groups[0]["lr"] if scheduler is not None else 1.0)
    return lrs


def lr_class_recipe(lr_class, kwargs, start, end=-1, init=0.1):
    return (
        "training_modifiers:\n  - !LearningRateModifier\n"
        f"    lr_class: {lr_class}\n    lr_kwargs: {kwargs}\n    init_lr: {init}\n"
        f"    start_epoch: {start}\n    end_epoch: {end}\n"
    )


def test_step_lr_against_torch():
    ours = run_lrs(
        lr_class_recipe("StepLR", "{step_size: 2, gamma: 0.5}", start=1, end=9), 11 * SPE
    )
    ref = torch_reference(
        lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2 * SPE, gamma=0.5),
        SPE,
        9 * SPE,
        11 * SPE,
        0.1,
    )
    assert ours == pytest.approx(ref, abs=1e-7)


def test_exponential_lr_decays_once_per_epoch_against_torch():
    ours = run_lrs(lr_class_recipe("ExponentialLR", "{gamma: 0.9}", start=0), 6 * SPE)
    ref = torch_reference(
        lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=SPE, gamma=0.9),
        0,
        None,
        6 * SPE,
        0.1,
    )
    assert ours == pytest.approx(ref, abs=1e-7)
    assert ours[SPE] == pytest.approx(0.09)


def test_multistep_lr_against_torch():
    ours = run_lrs(
        lr_class_recipe("MultiStepLR", "{milestones: [3, 5], gamma: 0.1}", start=1), 7 * SPE
    )
    ref = torch_reference(
        lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[2 * SPE, 4 * SPE], gamma=0.1),
        SPE,
        None,
        7 * SPE,
        0.1,
    )
    assert ours == pytest.approx(ref, abs=1e-7)


def test_cosine_warm_restarts_against_torch():
    ours = run_lrs(
        lr_class_recipe(
            "CosineAnnealingWarmRestarts", "{lr_min: 0.001, cycle_epochs: 2, T_mult: 2}", start=1
        ),
        12 * SPE,
    )
    ref = torch_reference(
        lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            o, T_0=2, T_mult=2, eta_min=0.001
        ),
        SPE,
        None,
        12 * SPE,
        0.1,
        epoch_stepped=lambda step: step / SPE - 1,
    )
    assert ours == pytest.approx(ref, abs=1e-7)


def test_set_learning_rate_and_step_based_fields():
    text = (
        "training_modifiers:\n"
        "  - !SetLearningRateModifier {start_step: 3, learning_rate: 0.5}\n"
        "  - !LearningRateFunctionModifier {start_step: 5, end_step: 9, lr_func: linear, init_lr: 0.4, final_lr: 0.0}\n"
    )
    lrs = run_lrs(text, 11, spe=4)
    assert lrs[:3] == [1.0, 1.0, 1.0]
    assert lrs[3:5] == [0.5, 0.5]
    assert lrs[5:] == pytest.approx([0.4, 0.3, 0.2, 0.1, 0.0, 0.0], abs=1e-7)


def test_later_starting_schedule_wins_at_the_boundary():
    # The seed recipe: one linear schedule ends at 30 where the QAT schedule restarts.
    text = (
        "training_modifiers:\n"
        "  - !LearningRateFunctionModifier {start_epoch: 2, end_epoch: 4, lr_func: linear, init_lr: 0.2, final_lr: 0.0}\n"
        "  - !LearningRateFunctionModifier {start_epoch: 0, end_epoch: 2, lr_func: linear, init_lr: 0.1, final_lr: 0.0}\n"
    )
    lrs = run_lrs(text, 5 * SPE)
    assert lrs[2 * SPE] == pytest.approx(0.2)
    assert lrs[2 * SPE - 1] == pytest.approx(0.1 * (1 - (2 * SPE - 1) / SPE / 2))


def test_param_groups_targets_only_listed_groups():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    optimizer = torch.optim.SGD(
        [{"params": model[0].parameters()}, {"params": model[1].parameters(), "lr": 0.3}], lr=0.2
    )
    manager = Manager.from_recipe(
        "m_modifiers:\n  - !SetLearningRateModifier {learning_rate: 0.01, param_groups: [1]}\n"
    )
    manager.modify(model, optimizer, 1).step()
    assert [g["lr"] for g in optimizer.param_groups] == [0.2, 0.01]
    bad = Manager.from_recipe(
        "m_modifiers:\n  - !SetLearningRateModifier {learning_rate: 0.01, param_groups: [2]}\n"
    )
    with pytest.raises(ModelMatchError, match=r"param_groups \[2\] do not exist"):
        bad.modify(model, optimizer, 1)


def test_set_weight_decay_at_start_epoch():
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.0)
    manager = Manager.from_recipe(
        "m_modifiers:\n  - !SetWeightDecayModifier {start_epoch: 1, weight_decay: 0.05}\n"
    )
    wrapped = manager.modify(model, optimizer, 2)
    decays = []
    for _ in range(4):
        wrapped.step()
        decays.append(optimizer.param_groups[0]["weight_decay"])
    assert decays == [0.0, 0.0, 0.05, 0.05]


def test_trainable_params_freezes_then_restores_and_rejects_unmatched_patterns():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    recipe = "m_modifiers:\n  - !TrainableParamsModifier {params: ['re:0\\..*'], trainable: false, start_epoch: 0, end_epoch: 1}\n"
    manager = Manager.from_recipe(recipe)
    wrapped = manager.modify(model, optimizer, 2)
    wrapped.step()
    assert (
        not model[0].weight.requires_grad
        and not model[0].bias.requires_grad
        and model[1].weight.requires_grad
    )
    wrapped.step()
    wrapped.step()
    assert model[0].weight.requires_grad
    bad = Manager.from_recipe(
        "m_modifiers:\n  - !TrainableParamsModifier {params: [encoder.*.weight], trainable: false}\n"
    )
    with pytest.raises(
        ModelMatchError,
        match=r"'encoder\.\*\.weight' matches no parameter.*prefix it with 're:'.*0\.weight",
    ):
        bad.modify(model, optimizer, 2)


def test_recipe_check_lr_table_matches_the_run():
    from sparseforge.schedule import schedule_table

    recipe = Recipe.load(
        lr_recipe(lr_func="linear", start_epoch=0, end_epoch=4, init_lr=0.1, final_lr=0.0)
    )
    rows = schedule_table(recipe, steps_per_epoch=SPE)
    assert [row.epoch for row in rows] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [row.learning_rate for row in rows] == pytest.approx([0.1, 0.075, 0.05, 0.025, 0.0])
