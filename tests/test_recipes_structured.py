"""The shipped structured + INT8 MiniLM recipes: a third of the encoder's MACs, scaled by num_epochs."""

import pytest
import torch
from conftest import make_tiny_model
from test_recipes_shipped import STRUCTURED

from sparseforge import Manager, Recipe, zoo
from sparseforge.modifiers.pruning import GroupPruningModifier
from sparseforge.modifiers.quantization import QuantizationModifier
from sparseforge.sparsity import encoder_macs

# all-MiniLM-L6-v2's encoder
MINILM = {
    "num_layers": 6,
    "num_heads": 12,
    "head_size": 32,
    "hidden_size": 384,
    "intermediate_size": 1536,
}


@pytest.mark.parametrize("stub", STRUCTURED)
def test_defaults_aim_at_a_third_of_the_encoder_macs(stub):
    recipe = Recipe.load(zoo.resolve_recipe(stub))
    pruning = recipe.modifiers_of(GroupPruningModifier)[0]
    targets = pruning.final_targets
    heads = round(12 * (1 - targets["heads"]))
    neurons = round(1536 * (1 - targets["neurons"]))
    layers = 6 - round(6 * targets.get("layers", 0.0))
    structure = {
        "dense": MINILM,
        "kept_layers": list(range(layers)),
        "heads": [heads] * layers,
        "neurons": [neurons] * layers,
    }
    for length in (64, 128):
        now, dense = encoder_macs(structure, length)
        assert 0.30 < now / dense < 0.36
    # QAT starts on the compacted model, after the structured schedule ends
    quant = recipe.modifiers_of(QuantizationModifier)[0]
    assert (
        pruning.end_epoch
        < quant.start_epoch
        < quant.disable_quantization_observer_epoch
        < recipe.max_epochs
    )


@pytest.mark.parametrize("stub", STRUCTURED)
def test_num_epochs_scales_the_whole_schedule(stub):
    full = Recipe.load(zoo.resolve_recipe(stub))
    half = Recipe.load(zoo.resolve_recipe(stub), {"num_epochs": full.variables["num_epochs"] / 2})
    for a, b in zip(full.modifiers, half.modifiers, strict=True):
        for field in (
            "start_epoch",
            "end_epoch",
            "update_frequency",
            "disable_quantization_observer_epoch",
        ):
            value = getattr(a, field, None)
            if isinstance(value, float) and value > 0:
                assert getattr(b, field) == pytest.approx(value / 2), (a.name, field)


@pytest.mark.parametrize("stub", STRUCTURED)
def test_runs_a_few_steps_on_a_tiny_bert_and_compacts(stub):
    model = make_tiny_model(
        "text-classification", num_attention_heads=4, intermediate_size=128
    ).train()
    teacher = make_tiny_model(
        "text-classification", seed=1, num_attention_heads=4, intermediate_size=128
    )
    manager = Manager(zoo.resolve_recipe(stub), {"num_epochs": 1})  # pruning ends at epoch 0.5
    optimizer = manager.modify(
        model,
        torch.optim.AdamW(model.parameters(), lr=1e-4),
        steps_per_epoch=4,
        distillation_teacher=teacher,
    )
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        ids = torch.randint(5, 100, (4, 12), generator=gen)
        inputs = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "labels": torch.randint(0, 2, (4,), generator=gen),
        }
        out = model(**inputs)
        loss = manager.loss_update(out.loss, student_outputs=out, student_inputs=inputs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    manager.finalize(model)
    # the tiny BERT: 2 layers of 4 heads (size 8) and 128 neurons; layers go first, heads and
    # neurons are then counted over the layers kept
    targets = Recipe.load(zoo.resolve_recipe(stub)).modifiers_of(GroupPruningModifier)[0]
    targets = targets.final_targets
    kept = 2 - round(2 * targets.get("layers", 0.0))
    layers = model.bert.encoder.layer
    assert len(layers) == kept
    heads = sum(layer.attention.self.query.out_features // 8 for layer in layers)
    neurons = sum(layer.intermediate.dense.out_features for layer in layers)
    assert heads == 4 * kept - round(targets["heads"] * 4 * kept)
    assert neurons == 128 * kept - round(targets["neurons"] * 128 * kept)
    assert any(
        "fake" in type(m).__name__.lower() or "quant" in type(m).__name__.lower()
        for m in model.modules()
    )
