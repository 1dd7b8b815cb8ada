"""sparseforge.checkpoint: one weight finder, one recipe name, generic structure rebuild, strict load."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_model

from sparseforge import Manager, ModelMatchError, SparseforgeError
from sparseforge.checkpoint import (
    RECIPE_FILE,
    apply_structure,
    load_model,
    load_state_dict,
    weight_files,
)
from sparseforge.modifiers.base import Modifier, register
from sparseforge.modifiers.pruning.layer import LayerIdentity

LAYER_RECIPE = """
modifiers:
  - !LayerPruningModifier
      layers: [bert.encoder.layer.1]
      start_epoch: {start}
"""


def _save(model, folder, recipe: str | None) -> None:
    model.save_pretrained(str(folder))
    if recipe is not None:
        (folder / RECIPE_FILE).write_text(recipe)


def _builder():
    return lambda: make_tiny_model("text-classification", seed=1)


def test_layer_pruned_checkpoint_reloads_through_apply_structure(tmp_path):
    model = make_tiny_model("text-classification")
    recipe = LAYER_RECIPE.format(start=0.0)
    manager = Manager(recipe)
    manager.initialize(model, None, 1)
    manager.update()
    manager.finalize(model)
    assert isinstance(model.bert.encoder.layer[1], LayerIdentity)
    _save(model, tmp_path, recipe)
    reloaded = load_model(tmp_path, _builder())
    assert isinstance(reloaded.bert.encoder.layer[1], LayerIdentity)
    ids = torch.randint(5, 100, (2, 7))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reloaded(input_ids=ids).logits)


def test_structure_the_weights_do_not_show_is_not_applied(tmp_path):
    # saved before the layer pruning started: every layer is still in the weights
    model = make_tiny_model("text-classification")
    _save(model, tmp_path, LAYER_RECIPE.format(start=5.0))
    reloaded = load_model(tmp_path, _builder())
    assert not isinstance(reloaded.bert.encoder.layer[1], LayerIdentity)
    ids = torch.randint(5, 100, (2, 7))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reloaded(input_ids=ids).logits)


@register
class _WidenClassifier(Modifier):
    """A test-only structural modifier: replaces the classifier with a wider one."""

    def apply_structure(self, model: torch.nn.Module) -> None:
        old = model.classifier
        model.classifier = torch.nn.Linear(old.in_features, old.out_features + 1)


def test_any_modifier_overriding_apply_structure_is_rebuilt_reshaped_weights(tmp_path):
    model = make_tiny_model("text-classification")
    _WidenClassifier().apply_structure(model)
    _save(model, tmp_path, "modifiers:\n  - !_WidenClassifier {}\n")
    reloaded = load_model(tmp_path, _builder())
    assert reloaded.classifier.out_features == model.classifier.out_features
    assert torch.equal(reloaded.classifier.weight, model.classifier.weight)


def test_weights_of_another_shape_are_refused_with_the_key(tmp_path):
    model = make_tiny_model("text-classification")
    _save(model, tmp_path, None)
    with pytest.raises(ModelMatchError, match=r"shapes differ: classifier\.(weight|bias)"):
        load_model(tmp_path, lambda: make_tiny_model("text-classification", num_labels=3))


def test_missing_recipe_is_named_in_the_error(tmp_path):
    model = make_tiny_model("text-classification")
    apply_structure(model, LAYER_RECIPE.format(start=0.0))
    _save(model, tmp_path, None)
    with pytest.raises(ModelMatchError, match=f"no {RECIPE_FILE} beside the weights"):
        load_model(tmp_path, _builder())


def test_weight_files_sharded_single_and_trainer_checkpoint(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.ones(2)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"b": torch.zeros(3)}, str(tmp_path / "model-00002-of-00002.safetensors"))
    index = {
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        }
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    torch.save({"state": 1}, tmp_path / "optimizer.pt")
    assert [f.name for f in weight_files(tmp_path)] == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    state = load_state_dict(tmp_path)
    assert set(state) == {"a", "b"} and torch.equal(state["b"], torch.zeros(3))

    trainer_ckpt = tmp_path / "ckpt"
    trainer_ckpt.mkdir()
    torch.save({"x": torch.ones(1)}, trainer_ckpt / "pytorch_model.bin")
    torch.save({"state": 1}, trainer_ckpt / "optimizer.pt")
    assert [f.name for f in weight_files(trainer_ckpt)] == ["pytorch_model.bin"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(SparseforgeError, match="no weights found"):
        weight_files(tmp_path / "empty")


def test_explicit_recipe_that_does_not_exist(tmp_path):
    _save(make_tiny_model("text-classification"), tmp_path, None)
    with pytest.raises(SparseforgeError, match="recipe not found"):
        load_model(tmp_path, _builder(), recipe=tmp_path / "nope.yaml")
