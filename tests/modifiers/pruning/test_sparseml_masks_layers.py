"""SparseML's `mask_type: filter` / `channel` and `LayerPruningModifier(layers: __ALL_PRUNABLE__)`."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model

from sparseforge import Manager, ModelMatchError
from sparseforge.modifiers.pruning.layer import LayerIdentity
from sparseforge.modifiers.pruning.masks import create_masks, group_count, parse_mask_type


def test_filter_prunes_whole_output_rows_with_lowest_mean_magnitude():
    weight = torch.tensor([[1.0, 1.0, 1.0], [0.1, 0.2, 0.1], [5.0, -5.0, 0.0], [0.3, -0.1, 0.0]])
    mask = create_masks({"w": weight.abs()}, {"w": 0.5}, "filter")["w"]
    assert mask.tolist() == [[True] * 3, [False] * 3, [True] * 3, [False] * 3]
    assert group_count(weight.shape, parse_mask_type("filter")) == 4


def test_channel_prunes_whole_input_columns():
    weight = torch.tensor([[1.0, 0.1, 2.0, 0.0], [1.0, 0.2, -2.0, 0.1]])
    mask = create_masks({"w": weight.abs()}, {"w": 0.5}, "channel")["w"]
    assert mask.tolist() == [[True, False, True, False], [True, False, True, False]]


def test_conv_filters_and_channels_span_the_kernel():
    torch.manual_seed(0)
    weight = torch.randn(6, 4, 3, 3)
    weight[2] *= 0.01  # the weakest filter
    weight[:, 1] *= 0.01  # the weakest input channel
    filters = create_masks({"w": weight.abs()}, {"w": 1 / 6}, "filter")["w"]
    assert not filters[2].any() and filters[[0, 1, 3, 4, 5]].all()
    channels = create_masks({"w": weight.abs()}, {"w": 0.25}, "channel")["w"]
    assert not channels[:, 1].any() and channels[:, [0, 2, 3]].all()


def test_gmp_with_filter_mask_type_ends_on_whole_rows():
    model = make_tiny_model("text-classification")
    recipe = """
modifiers:
  - !GMPruningModifier
      params: ['re:bert.encoder.layer.*.intermediate.dense.weight']
      init_sparsity: 0.25
      final_sparsity: 0.5
      start_epoch: 0.0
      end_epoch: 1.0
      update_frequency: 0.5
      mask_type: filter
"""
    manager = Manager(recipe)
    optimizer = manager.modify(model, torch.optim.SGD(model.parameters(), lr=0.01), 2)
    for step in range(3):
        ids = torch.randint(5, 100, (2, 8), generator=torch.Generator().manual_seed(step))
        model(input_ids=ids, labels=torch.tensor([0, 1])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    manager.finalize(model)
    for layer in model.bert.encoder.layer:
        weight = layer.intermediate.dense.weight  # (64, 32): 64 output rows
        zero_rows = (weight == 0).all(dim=1)
        assert int(zero_rows.sum()) == 32
        assert int((weight == 0).sum()) == 32 * 32  # nothing pruned outside those rows


class Square(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(8, 8)
        self.act = torch.nn.ReLU()
        self.b = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.b(self.act(self.a(x)))


def test_layer_pruning_all_prunable_replaces_every_linear():
    model = Square()
    manager = Manager("modifiers:\n  - !LayerPruningModifier\n      layers: __ALL_PRUNABLE__\n")
    manager.initialize(model, None, 1)
    manager.update()
    assert isinstance(model.a, LayerIdentity) and isinstance(model.b, LayerIdentity)
    x = torch.randn(3, 8)
    assert torch.equal(model(x), torch.relu(x))


def test_layer_pruning_all_prunable_refuses_layers_an_identity_cannot_replace():
    model = make_tiny_model("text-classification")
    manager = Manager("modifiers:\n  - !LayerPruningModifier\n      layers: __ALL_PRUNABLE__\n")
    with pytest.raises(ModelMatchError, match="intermediate.dense maps 32 features to 64"):
        manager.initialize(model, None, 1)
