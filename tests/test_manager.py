"""The manager binds a recipe to a model: the optimizer wrapper, errors before training, resume."""

import pytest
import torch

from sparseforge import (
    Manager,
    ModelMatchError,
    ScheduledModifierManager,
    ScheduledOptimizer,
    SparseforgeError,
)

RECIPE = """
version: 1.1.0
num_epochs: 6
training_modifiers:
  - !EpochRangeModifier {start_epoch: 0, end_epoch: eval(num_epochs)}
  - !LearningRateFunctionModifier {start_epoch: 0, end_epoch: 3, lr_func: cosine, init_lr: 0.05, final_lr: 0.001}
  - !LearningRateModifier
    start_epoch: 3
    end_epoch: eval(num_epochs)
    lr_class: StepLR
    lr_kwargs: {step_size: 1, gamma: 0.5}
    init_lr: 0.02
  - !TrainableParamsModifier {params: ['re:0\\..*'], trainable: false, start_epoch: 1, end_epoch: 2}
"""


def make(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return model, optimizer


def train(model, optimizer, steps, data_seed=0, start=0, record=None):
    gen = torch.Generator().manual_seed(data_seed)
    batches = [
        (torch.randn(8, 4, generator=gen), torch.randint(0, 2, (8,), generator=gen))
        for _ in range(start + steps)
    ]
    for x, y in batches[start:]:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if record is not None:
            record.append(optimizer.param_groups[0]["lr"])


def test_wrapper_looks_like_the_optimizer_it_wraps():
    model, optimizer = make()
    manager = Manager.from_recipe(RECIPE)
    wrapped = manager.modify(model, optimizer, steps_per_epoch=5)
    assert isinstance(wrapped, ScheduledOptimizer) and isinstance(wrapped, torch.optim.Optimizer)
    assert wrapped.param_groups is optimizer.param_groups and wrapped.state is optimizer.state
    scheduler = torch.optim.lr_scheduler.LambdaLR(wrapped, lambda step: 1.0)  # schedulers accept it
    scaler = torch.amp.GradScaler("cpu")  # and so do grad scalers
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    scaler.scale(torch.nn.functional.cross_entropy(model(x), y)).backward()
    scaler.step(wrapped)
    scaler.update()
    scheduler.step()
    assert manager.step == 1 and manager.epoch == pytest.approx(0.2)
    assert wrapped.state_dict()["param_groups"] == optimizer.state_dict()["param_groups"]
    assert manager.max_epochs == 6 and manager.controls_learning_rate


def test_update_runs_once_per_step_however_often_loss_update_is_called():
    model, optimizer = make()
    manager = Manager.from_recipe(RECIPE)
    wrapped = manager.modify(model, optimizer, steps_per_epoch=5)
    loss = torch.tensor(1.5)
    for _ in range(3):  # gradient accumulation: several losses per optimizer step
        assert manager.loss_update(loss) is loss
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    wrapped.step()
    assert manager.step == 1


def test_resume_continues_the_schedule_exactly(tmp_path):
    steps_per_epoch, total, cut = 5, 32, 13
    model, optimizer = make()
    manager = Manager.from_recipe(RECIPE)
    wrapped = manager.modify(model, optimizer, steps_per_epoch)
    uninterrupted_lrs = []
    train(model, wrapped, total, record=uninterrupted_lrs)

    model_a, optimizer_a = make()
    manager_a = Manager.from_recipe(RECIPE)
    wrapped_a = manager_a.modify(model_a, optimizer_a, steps_per_epoch)
    lrs = []
    train(model_a, wrapped_a, cut, record=lrs)
    torch.save(
        {
            "model": model_a.state_dict(),
            "optimizer": optimizer_a.state_dict(),
            "manager": manager_a.state_dict(),
        },
        tmp_path / "ckpt.pt",
    )
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    model_b, optimizer_b = make(
        seed=123
    )  # different init: everything must come from the checkpoint
    model_b.load_state_dict(saved["model"])
    optimizer_b.load_state_dict(saved["optimizer"])
    manager_b = Manager.from_recipe(RECIPE)
    wrapped_b = manager_b.modify(model_b, optimizer_b, steps_per_epoch)
    manager_b.load_state_dict(saved["manager"])
    train(model_b, wrapped_b, total - cut, start=cut, record=lrs)

    assert lrs == uninterrupted_lrs
    for p_resumed, p_straight in zip(model_b.parameters(), model.parameters(), strict=True):
        assert torch.equal(p_resumed, p_straight)
    assert manager_b.step == manager.step == total


def test_errors_surface_at_modify_before_training():
    model, optimizer = make()
    manager = Manager.from_recipe(
        "m_modifiers:\n  - !TrainableParamsModifier {params: [bert.encoder.layer.0.weight], trainable: false}\n"
    )
    with pytest.raises(ModelMatchError, match=r"matches no parameter.*0\.weight, 2\.weight"):
        manager.modify(model, optimizer, 10)
    with pytest.raises(SparseforgeError, match="steps_per_epoch"):
        Manager.from_recipe(RECIPE).modify(model, optimizer, 0)
    with pytest.raises(SparseforgeError, match="not initialized"):
        Manager.from_recipe(RECIPE).loss_update(torch.tensor(1.0))


def test_sparseml_spelling_and_recipe_variables(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    manager = ScheduledModifierManager.from_yaml(str(path), recipe_variables={"num_epochs": 8})
    assert manager.max_epochs == 8
    model, optimizer = make()
    wrapped = manager.modify(model, optimizer, 2)
    train(model, wrapped, 3)
    manager.finalize(model)
    with pytest.raises(SparseforgeError, match="different model"):
        manager.finalize(torch.nn.Linear(1, 1))


# ----- issue 17: the recipe is data, each manager runs its own modifiers ------------------------
PRUNE = """
pruning_modifiers:
  - !GMPruningModifier
    params: ['re:.*weight']
    init_sparsity: 0.0
    final_sparsity: 0.5
    start_epoch: 0
    end_epoch: 2
    update_frequency: 0.5
"""


def test_two_managers_of_one_recipe_share_no_state():
    from sparseforge import Recipe

    recipe = Recipe.load(PRUNE)
    first, second = Manager(recipe), Manager(recipe)
    assert first.modifiers[0] is not second.modifiers[0]
    model_a, optimizer_a = make()
    wrapped = first.modify(model_a, optimizer_a, 4)
    train(model_a, wrapped, 9)  # first reaches its final sparsity at step 8 (epoch 2)
    assert first.modifiers[0].ended and first.modifiers[0].masks
    assert not second.modifiers[0].started and not second.modifiers[0].masks
    model_b, optimizer_b = make()
    second.modify(model_b, optimizer_b, 10)  # its own schedule: 10 steps per epoch, not 4
    assert second.schedule.steps_per_epoch == 10 and first.schedule.steps_per_epoch == 4
    # the recipe's specs were never bound or written to (no private-field writes)
    for spec in recipe.modifiers:
        assert (
            spec.is_spec and spec._rt.schedule is None and not spec.started and not spec.initialized
        )


def test_initializing_a_manager_or_a_modifier_twice_is_an_error():
    model, optimizer = make()
    manager = Manager(PRUNE)
    manager.modify(model, optimizer, 4)
    with pytest.raises(SparseforgeError, match="already initialized"):
        manager.initialize(model, optimizer, 4)  # no silent re-binding
    with pytest.raises(SparseforgeError, match="different model"):
        manager.modify(torch.nn.Linear(4, 2), optimizer, 4)
    with pytest.raises(SparseforgeError, match="already initialized"):
        manager.modifiers[0].initialize(manager.state)
    manager.finalize(model)
    manager.finalize(model)  # the manager's second finalize does nothing...
    with pytest.raises(SparseforgeError, match="already finalized"):
        manager.modifiers[0].finalize(manager.state)  # ...a modifier's is an error


STEP_RECIPE = """
training_modifiers:
  - !EpochRangeModifier {start_step: 0, end_step: 30}
  - !LearningRateFunctionModifier {start_step: 0, end_step: 30, lr_func: linear, init_lr: 0.1, final_lr: 0.0}
"""


def test_a_step_only_recipe_reports_its_end_once_steps_per_epoch_is_known():
    from sparseforge import Recipe, RecipeError

    recipe = Recipe.load(STEP_RECIPE)
    assert recipe.uses_steps
    with pytest.raises(RecipeError, match="steps_per_epoch"):
        _ = recipe.end_epoch  # not a silent -1
    assert recipe.end_epoch_at(20) == 1.5 and recipe.max_epochs_at(20) == 2
    manager = Manager(recipe)
    model, optimizer = make()
    manager.modify(model, optimizer, 12)
    assert manager.end_epoch == 2.5 and manager.max_epochs == 3  # the bound run's steps per epoch
    with pytest.raises(SparseforgeError, match="counts optimizer steps"):
        Manager(recipe).initialize(model, 0.0)  # SparseML's form has no steps_per_epoch


def test_recipe_check_shows_the_end_of_a_step_based_recipe(tmp_path, capsys):
    from sparseforge.cli import main

    path = tmp_path / "steps.yaml"
    path.write_text(STEP_RECIPE)
    assert main(["recipe", "check", str(path), "--steps_per_epoch", "20"]) == 0
    out = capsys.readouterr().out
    assert "max_epochs 2 (ends at epoch 1.5) with steps_per_epoch=20" in out
    assert "1.5    0 " in out  # the table runs to the end, where the LR reaches final_lr


def test_a_failed_initialize_leaves_a_manager_that_can_bind_again():
    manager = Manager(
        "m_modifiers:\n  - !TrainableParamsModifier {params: ['2.weight'], trainable: false}\n"
    )
    with pytest.raises(ModelMatchError):
        manager.modify(
            torch.nn.Linear(4, 2), torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1), 4
        )
    assert manager.state is None
    model, optimizer = make()
    manager.modify(model, optimizer, 4)  # the right model now
    assert not model[2].weight.requires_grad
