"""LayerPruningModifier: encoder layers replaced by identities that BERT's encoder accepts."""

import pytest
import torch
from conftest import make_tiny_model

from sparseforge import Manager, ModelMatchError
from sparseforge.modifiers.pruning import LayerIdentity

RECIPE = """
pruning_modifiers:
  - !LayerPruningModifier
    layers: ['bert.encoder.layer.1']
    start_epoch: START
    end_epoch: END
"""


def qa_outputs(model, ids):
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.start_logits, out.end_logits


def train_steps(model, optimizer, steps):
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        ids = torch.randint(5, 100, (2, 8), generator=gen)
        out = model(
            input_ids=ids,
            start_positions=torch.zeros(2, dtype=torch.long),
            end_positions=torch.ones(2, dtype=torch.long),
        )
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def test_removed_layer_equals_a_shallower_model_and_reloads():
    model = make_tiny_model("question-answering").train()
    manager = Manager(RECIPE.replace("START", "0").replace("END", "-1"))
    optimizer = manager.modify(
        model, torch.optim.AdamW(model.parameters(), lr=1e-3), steps_per_epoch=2
    )
    train_steps(model, optimizer, 3)
    manager.finalize(model)
    assert isinstance(model.bert.encoder.layer[1], LayerIdentity)
    assert not any(name.startswith("bert.encoder.layer.1.") for name in model.state_dict())

    ids = torch.randint(5, 100, (3, 10))
    shallow = make_tiny_model("question-answering", num_hidden_layers=1)
    shallow.load_state_dict(model.state_dict())
    for got, want in zip(qa_outputs(model, ids), qa_outputs(shallow, ids), strict=True):
        torch.testing.assert_close(got, want)

    fresh = make_tiny_model("question-answering", seed=7)
    Manager(RECIPE.replace("START", "0").replace("END", "-1")).apply_structure(fresh)
    fresh.load_state_dict(model.state_dict())  # strict: same structure
    for got, want in zip(qa_outputs(fresh, ids), qa_outputs(model, ids), strict=True):
        torch.testing.assert_close(got, want)


def test_layers_come_back_at_end_epoch_and_resume():
    model = make_tiny_model("question-answering").train()
    original = model.bert.encoder.layer[1]
    manager = Manager(RECIPE.replace("START", "1").replace("END", "3"))
    optimizer = manager.modify(
        model, torch.optim.AdamW(model.parameters(), lr=1e-3), steps_per_epoch=2
    )
    train_steps(model, optimizer, 2)  # start update runs in step 2's pre-step
    assert model.bert.encoder.layer[1] is original
    train_steps(model, optimizer, 2)
    assert isinstance(model.bert.encoder.layer[1], LayerIdentity)
    saved = manager.state_dict()

    resumed = make_tiny_model("question-answering").train()
    manager2 = Manager(RECIPE.replace("START", "1").replace("END", "3"))
    manager2.modify(resumed, torch.optim.AdamW(resumed.parameters(), lr=1e-3), steps_per_epoch=2)
    manager2.load_state_dict(saved)
    assert isinstance(resumed.bert.encoder.layer[1], LayerIdentity)

    train_steps(model, optimizer, 3)  # through the end at epoch 3
    assert model.bert.encoder.layer[1] is original
    manager.finalize(model)
    assert model.bert.encoder.layer[1] is original  # end_epoch set: the trained model keeps it
    fresh = make_tiny_model("question-answering")
    manager.apply_structure(fresh)
    assert not isinstance(fresh.bert.encoder.layer[1], LayerIdentity)


def test_unknown_layer_is_an_error_at_modify():
    model = make_tiny_model("question-answering")
    manager = Manager(
        RECIPE.replace("START", "0").replace("END", "-1").replace("layer.1", "layer.11")
    )
    with pytest.raises(ModelMatchError, match=r"bert\.encoder\.layer\.11"):
        manager.modify(model, torch.optim.SGD(model.parameters(), lr=0.1), steps_per_epoch=1)


def test_identity_returns_tuple_when_layer_did():
    class TupleLayer(torch.nn.Module):
        def forward(self, hidden_states, mask=None) -> tuple[torch.Tensor, ...]:
            return (hidden_states * 2,)

    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    model.add_module("block", TupleLayer())
    from sparseforge.modifiers.pruning.layer import LayerPruningModifier

    mod = LayerPruningModifier(layers="block")
    mod._names = ["block"]
    mod.remove_layers(model)
    x = torch.randn(2, 4)
    assert model.block(x, None)[0] is x
