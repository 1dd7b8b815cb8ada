"""SparseML's StructuredPruningModifier and LayerThinningModifier recipes on transformers encoders."""

import pytest
import torch
from structured_models import batch, logits, make_model, train

from sparseforge import Manager, ModelMatchError, RecipeError
from sparseforge.modifiers.pruning.groups import find_encoder_groups

NEURONS = """
pruning_modifiers:
  - !StructuredPruningModifier
    params: ['re:bert.encoder.layer.*.intermediate.dense.weight']
    param_groups:
      - [bert.encoder.layer.0.intermediate.dense.weight, bert.encoder.layer.0.output.dense.weight]
    mask_type: filter
    init_sparsity: 0.05
    final_sparsity: 0.5
    start_epoch: 0.0
    end_epoch: 1.0
    update_frequency: 0.5
    leave_enabled: True
    inter_func: cubic
  - !LayerThinningModifier
    param_group_dependency_map:
      "bert.encoder.layer.0.intermediate.dense.weight": [bert.encoder.layer.0.output.dense.weight]
    structure_type: filter
    start_epoch: THIN
"""
HEADS = """
pruning_modifiers:
  - !StructuredPruningModifier
    params: ['re:bert.encoder.layer.[01].attention.output.dense.weight']
    mask_type: channel
    init_sparsity: 0.0
    final_sparsity: 0.5
    start_epoch: 0.0
    end_epoch: 1.0
    update_frequency: 0.5
"""


def _run(text, steps):
    model = make_model("bert")
    manager = Manager(text)
    optimizer = manager.modify(
        model, torch.optim.AdamW(model.parameters(), lr=1e-3), steps_per_epoch=4
    )
    train(model, optimizer, manager, steps)
    return model, manager, optimizer


def test_filter_pruning_of_ffn_then_thinning_removes_neurons_evenly_per_layer():
    model, manager, optimizer = _run(NEURONS.replace("THIN", "2.0"), 8)  # pruned, not yet thinned
    for layer in model.bert.encoder.layer:
        rows = layer.intermediate.dense.weight.abs().sum(1) != 0
        assert int(rows.sum()) == 32  # every layer exactly at 50%, as SparseML prunes per parameter
        assert not layer.output.dense.weight[:, ~rows].any()  # coupled: the output columns too
    masked = logits(model, batch(30))
    train(model, optimizer, manager, 1, seed=40)  # epoch 2.0: LayerThinningModifier
    assert [layer.intermediate.dense.out_features for layer in model.bert.encoder.layer] == [
        32,
        32,
        32,
    ]
    assert [layer.attention.self.query.out_features for layer in model.bert.encoder.layer] == [
        32,
        32,
        32,
    ]
    manager.finalize(model)
    assert model.config.intermediate_size == 32
    assert not torch.equal(logits(model, batch(30)), masked)  # one more training step happened
    # thinning alone, at finalize, equals the masked model
    model, manager, _ = _run(NEURONS.replace("THIN", "5.0"), 8)
    masked = logits(model, batch(31))
    manager.finalize(model)
    assert model.bert.encoder.layer[0].intermediate.dense.out_features == 32
    torch.testing.assert_close(logits(model, batch(31)), masked, atol=1e-5, rtol=0)


def test_channel_pruning_of_attention_output_prunes_whole_heads_of_selected_layers():
    model, manager, _ = _run(HEADS + "  - !LayerThinningModifier {start_epoch: 1.0}\n", 5)
    manager.finalize(model)
    heads = [
        find_encoder_groups(model).heads(model, layer)
        for layer in find_encoder_groups(model).layers
    ]
    assert heads == [2, 2, 4]  # layer 2 was not selected


def test_bad_sparseml_fields_and_params():
    with pytest.raises(RecipeError, match="filter' or 'channel"):
        Manager(HEADS.replace("mask_type: channel", "mask_type: block4"))
    with pytest.raises(RecipeError, match="update_epochs must be sorted"):
        Manager("modifiers:\n  - !LayerThinningModifier {update_epochs: [2.0, 1.0]}\n")
    model = make_model("bert")
    text = HEADS.replace(
        "re:bert.encoder.layer.[01].attention.output.dense.weight",
        "bert.embeddings.word_embeddings.weight",
    )
    with pytest.raises(ModelMatchError, match="not part of a structure"):
        Manager(text).modify(model, torch.optim.SGD(model.parameters(), lr=0.1), 4)
    text = NEURONS.replace(
        "bert.encoder.layer.0.output.dense.weight]", "bert.encoder.layer.1.output.dense.weight]"
    )
    with pytest.raises(ModelMatchError, match="do not share one structure"):
        Manager(text.replace("THIN", "2.0")).modify(
            model, torch.optim.SGD(model.parameters(), lr=0.1), 4
        )


def test_thinning_after_masks_were_released_removes_the_groups_still_zero():
    text = NEURONS.replace("leave_enabled: True", "leave_enabled: False").replace("THIN", "2.0")
    model, manager, optimizer = _run(text, 8)  # masks released after end_epoch 1.0
    # a neuron whose input row and output column are both zero gets no gradient: it stays zero
    alive = [
        int((layer.intermediate.dense.weight.abs().sum(1) != 0).sum())
        for layer in model.bert.encoder.layer
    ]
    assert alive == [32, 32, 32] and not manager.modifiers[0]._enforcing
    with torch.no_grad():  # one pruned neuron of layer 0 comes back: thinning must keep it
        dead = (model.bert.encoder.layer[0].intermediate.dense.weight.abs().sum(1) == 0).nonzero()[
            0, 0
        ]
        model.bert.encoder.layer[0].intermediate.dense.weight[dead, 0] = 0.5
    train(model, optimizer, manager, 1, seed=41)  # epoch 2.0: thinning removes what is still zero
    assert [layer.intermediate.dense.out_features for layer in model.bert.encoder.layer] == [
        33,
        32,
        32,
    ]
