"""GMP / Magnitude / GlobalMagnitude: SparseML's schedule, selection forms, and a seed-style run."""

from itertools import pairwise

import pytest
import torch
from conftest import make_tiny_model

from sparseforge import Manager, Recipe, RecipeError
from sparseforge.modifiers.pruning import GlobalMagnitudePruningModifier, GMPruningModifier

SCHEDULE = """
pruning_modifiers:
  - !{kind}
    params: {params}
    init_sparsity: {init}
    final_sparsity: {final}
    start_epoch: 2
    end_epoch: 6
    update_frequency: 0.5
    inter_func: {func}
"""


def mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(20, 40), torch.nn.ReLU(), torch.nn.Linear(40, 10))


def train(model, recipe, epochs, spe=4, lr=0.01, on_step=None):
    manager = Manager(recipe)
    optimizer = manager.modify(
        model, torch.optim.AdamW(model.parameters(), lr=lr), steps_per_epoch=spe
    )
    gen = torch.Generator().manual_seed(0)
    for step in range(int(epochs * spe)):
        x = torch.randn(4, model[0].in_features, generator=gen)
        loss = model(x).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if on_step:
            on_step(step, manager)
    return manager


@pytest.mark.parametrize("func", ["linear", "cubic", "inverse_cubic"])
def test_schedule_nothing_before_start_rising_exact_final(func):
    model = mlp()
    recipe = SCHEDULE.format(
        kind="GMPruningModifier",
        params="['0.weight', '2.weight']",
        init=0.05,
        final=0.85,
        func=func,
    )
    seen = []

    def on_step(step, manager):
        mod = manager.modifiers[0]
        zeros = int((model[0].weight == 0).sum())
        if (
            manager.epoch <= 2
        ):  # steps before start_epoch (the start update runs in step 8's pre-step)
            assert step == 8 or (not mod.started and zeros == 0), "pruned before start_epoch"
        if mod.started and (not seen or seen[-1][0] != mod._rt.last_update_epoch):
            seen.append((mod._rt.last_update_epoch, mod._targets["0.weight"], zeros))

    train(model, recipe, 8, on_step=on_step)
    epochs = [e for e, _, _ in seen]
    targets = [t for _, t, _ in seen]
    counts = [c for _, _, c in seen]
    assert epochs == [2 + 0.5 * i for i in range(9)]  # start, every 0.5 epochs, end
    assert targets[0] == 0.05 and counts[0] == round(0.05 * 800)
    assert targets[-1] == 0.85 and counts[-1] == round(0.85 * 800)
    assert all(b > a for a, b in pairwise(targets))  # strictly rising at each update
    assert all(b > a for a, b in pairwise(counts))
    assert int((model[2].weight == 0).sum()) == round(0.85 * 400)
    assert int((model[0].bias == 0).sum()) == 0


def test_final_sparsity_dict_and_from_param():
    model = mlp()
    with torch.no_grad():
        model[0].weight[:, :5] = 0  # 25% already zero
    recipe = """
    pruning_modifiers:
      - !MagnitudePruningModifier
        init_sparsity: __FROM_PARAM__
        final_sparsity: {0.5: ['0.weight'], 0.9: ['re:2\\..*']}
        start_epoch: 0
        end_epoch: 2
        update_frequency: 0.5
    """
    starts = {}

    def on_step(step, manager):
        if step == 0:
            starts.update(manager.modifiers[0]._targets)

    manager = train(model, recipe, 3, on_step=on_step)
    assert starts["0.weight"] == 0.25 and starts["2.weight"] == 0.0 and starts["2.bias"] == 0.0
    assert int((model[0].weight == 0).sum()) == 400
    assert int((model[2].weight == 0).sum()) == 360
    assert int((model[2].bias == 0).sum()) == 9
    assert set(manager.modifiers[0].masks) == {"0.weight", "2.weight", "2.bias"}


def test_global_magnitude_hits_total_with_unequal_layers():
    model = mlp()
    with torch.no_grad():
        model[2].weight.mul_(10)  # the second layer's weights are larger: it is pruned less
    recipe = SCHEDULE.format(
        kind="GlobalMagnitudePruningModifier",
        params="__ALL_PRUNABLE__",
        init=0.0,
        final=0.7,
        func="cubic",
    )
    manager = train(model, recipe, 7, lr=1e-4)
    zeros = [int((model[i].weight == 0).sum()) for i in (0, 2)]
    assert sum(zeros) == round(0.7 * 1200)
    assert zeros[0] / 800 > 0.75 and zeros[1] / 400 < 0.6
    assert isinstance(manager.modifiers[0], GlobalMagnitudePruningModifier)


def test_gmp_global_sparsity_flag_matches_global_modifier():
    a, b = mlp(), mlp()
    recipe = SCHEDULE.format(
        kind="GMPruningModifier", params="__ALL_PRUNABLE__", init=0.0, final=0.6, func="linear"
    )
    train(
        a,
        recipe.replace("inter_func: linear", "inter_func: linear\n    global_sparsity: true"),
        7,
        lr=1e-4,
    )
    train(b, recipe.replace("GMPruningModifier", "GlobalMagnitudePruningModifier"), 7, lr=1e-4)
    assert torch.equal(a[0].weight, b[0].weight) and torch.equal(a[2].weight, b[2].weight)


@pytest.mark.parametrize(
    "fields, message",
    [
        ("mask_type: '2:4'\n    final_sparsity: 0.8", "2:4"),
        ("mask_type: blocks", "mask_type"),
        ("phased: true", "phased"),
        ("inter_func: quadratic", "inter_func"),
        ("init_sparsity: 1.5", "init_sparsity"),
    ],
)
def test_invalid_fields_are_recipe_errors(fields, message):
    base = {
        "params": ["re:.*weight"],
        "init_sparsity": 0.0,
        "final_sparsity": 0.5,
        "start_epoch": 0,
        "end_epoch": 2,
        "update_frequency": 1,
    }
    import yaml

    for line in fields.split("\n"):
        key, value = line.strip().split(": ", 1)
        base[key] = yaml.safe_load(value)
    text = "pruning_modifiers:\n  - !GMPruningModifier\n" + "".join(
        f"    {k}: {v!r}\n" for k, v in base.items()
    )
    with pytest.raises(RecipeError, match=message):
        Recipe.load(text.replace("'", '"'))


def test_missing_end_epoch_and_params_are_errors():
    with pytest.raises(RecipeError, match="end_epoch"):
        Recipe.load(
            "m_modifiers:\n  - !GMPruningModifier {params: __ALL__, init_sparsity: 0, final_sparsity: 0.5, start_epoch: 0}"
        )
    with pytest.raises(RecipeError, match="params"):
        Recipe.load(
            "m_modifiers:\n  - !GMPruningModifier {init_sparsity: 0, final_sparsity: 0.5, start_epoch: 0, end_epoch: 1}"
        )


def test_recipe_round_trip_and_schedule_values():
    recipe = Recipe.load(
        SCHEDULE.format(
            kind="GMPruningModifier", params="['0.weight']", init=0.0, final=0.8, func="cubic"
        ).replace(
            "inter_func: cubic", "inter_func: cubic\n    mask_type: [1, 4]\n    log_types: __ALL__"
        )
    )
    again = Recipe.load(recipe.to_yaml())
    assert again.modifiers[0].recipe_fields() == recipe.modifiers[0].recipe_fields()
    mod = recipe.modifiers[0]
    assert isinstance(mod, GMPruningModifier)
    assert mod.schedule_values(1.0) == {}
    assert mod.schedule_values(2.0) == {"sparsity": 0.0}
    assert mod.schedule_values(4.0)["sparsity"] == pytest.approx(0.8 * (1 - 0.5**3))
    assert mod.schedule_values(4.4) == mod.schedule_values(4.0)  # in force until the next update
    assert mod.schedule_values(9.0) == {"sparsity": 0.8}
    assert [epoch for epoch, _ in mod.schedule_events()] == [2.0, 6.0]


def test_seed_style_recipe_on_tiny_bert_qa():
    """The seed recipe's GMP ([1,4] blocks, cubic, 0.01-epoch updates) over a whole AdamW run."""
    model = make_tiny_model("question-answering").train()
    recipe = """
    pruning_modifiers:
      - !GMPruningModifier
        params:
          - re:bert.encoder.layer.*.attention.self.query.weight
          - re:bert.encoder.layer.*.attention.self.key.weight
          - re:bert.encoder.layer.*.attention.self.value.weight
          - re:bert.encoder.layer.*.attention.output.dense.weight
          - re:bert.encoder.layer.*.intermediate.dense.weight
          - re:bert.encoder.layer.*.output.dense.weight
        start_epoch: 1
        end_epoch: 3
        init_sparsity: 0.0
        final_sparsity: 0.7
        inter_func: cubic
        update_frequency: 0.01
        leave_enabled: True
        mask_type: [1,4]
    """
    manager = Manager(recipe)
    spe = 10
    optimizer = manager.modify(
        model, torch.optim.AdamW(model.parameters(), lr=5e-3), steps_per_epoch=spe
    )
    gen = torch.Generator().manual_seed(0)
    for _ in range(4 * spe):
        ids = torch.randint(5, 100, (4, 24), generator=gen)
        out = model(
            input_ids=ids,
            start_positions=torch.randint(0, 24, (4,), generator=gen),
            end_positions=torch.randint(0, 24, (4,), generator=gen),
        )
        manager.loss_update(out.loss).backward()
        optimizer.step()
        optimizer.zero_grad()
    manager.finalize(model)
    pruned = set(manager.modifiers[0].param_names)
    assert len(pruned) == 12
    for name, param in model.named_parameters():
        if name in pruned:
            blocks = (param == 0).reshape(-1, 4)
            assert bool((blocks.all(dim=1) | (~blocks).any(dim=1)).all())
            assert bool((blocks.all(dim=1) | (~blocks).all(dim=1)).all()), (
                f"{name}: a [1,4] block is mixed"
            )
            assert int(blocks.all(dim=1).sum()) == round(0.7 * blocks.shape[0]), name
        else:
            assert float((param == 0).float().mean()) < 0.01, f"{name} should stay dense"


def test_unquoted_n_m_mask_type_gets_a_hint():
    text = "m_modifiers:\n  - !GMPruningModifier {params: __ALL__, init_sparsity: 0, final_sparsity: 0.5, start_epoch: 0, end_epoch: 2, mask_type: 2:4}"
    with pytest.raises(RecipeError, match="quoted: '2:4'"):
        Recipe.load(text)
    assert Recipe.load(text.replace("2:4", "'2:4'")).modifiers[0].structure.describe() == "2:4"
