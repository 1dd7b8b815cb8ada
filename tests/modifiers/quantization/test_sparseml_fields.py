"""SparseML's QuantizationModifier fields (issue 18, items 3 and 5): a recipe.yaml SparseML saved
loads and trains; qconfig kwargs and custom module types are honoured where they mean something;
`ignore` / `scheme_overrides` entries that match nothing are errors unless `strict: false`."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import FIXTURES, make_tiny_model

from sparseforge import Manager, ModelMatchError, Recipe, RecipeError
from sparseforge.modifiers.quantization import (
    QuantizationModifier,
    QuantizedLinear,
    fake_quantizers,
)
from sparseforge.modifiers.quantization import modifier as qmod

SPARSEML_SAVED = FIXTURES / "recipes" / "sparseml_saved_qat.yaml"


@pytest.fixture(autouse=True)
def fresh_warnings():
    qmod._warned.clear()
    yield
    qmod._warned.clear()


def test_recipe_yaml_as_sparseml_writes_it_loads_and_trains(train, caplog):
    recipe = Recipe.load(SPARSEML_SAVED)
    quant = recipe.modifiers[1]
    assert quant.model_fuse_fn_name is None and quant.num_calibration_steps is None
    assert quant.quantize_linear_activations is False
    model = make_tiny_model("text-classification")
    with caplog.at_level(logging.WARNING, logger=qmod.__name__):
        Recipe.load(SPARSEML_SAVED)  # a second load does not warn again
        manager = train(model, SPARSEML_SAVED.read_text(), steps=8, steps_per_epoch=2)
    quantizers = fake_quantizers(model)
    assert "bert.encoder.layer.0.attention.self.query.input_fake_quant" in quantizers
    assert not any(q.observer_enabled for q in quantizers.values())  # frozen at epoch 1.5
    assert manager.max_epochs == 2
    conv_warnings = [r for r in caplog.records if "quantize_conv_activations" in r.message]
    assert len(conv_warnings) <= 1


def test_unsupported_fields_warn_once(caplog):
    with caplog.at_level(logging.WARNING, logger=qmod.__name__):
        for _ in range(3):
            QuantizationModifier(model_fuse_fn_name="fuse_module", model_fuse_fn_kwargs={"a": 1})
            QuantizationModifier(
                activation_qconfig_kwargs={"observer": "x", "averaging_constant": 0.1}
            )
    messages = [r.message for r in caplog.records]
    assert sum("model_fuse_fn_name" in m for m in messages) == 1
    assert sum("['observer'] ignored" in m for m in messages) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=qmod.__name__):
        QuantizationModifier(model_fuse_fn_name="no_fuse", model_fuse_fn_kwargs={})
    assert not caplog.records


def test_qconfig_kwargs_are_honoured():
    model = make_tiny_model("text-classification")
    QuantizationModifier(
        submodules=["classifier"],
        activation_qconfig_kwargs={"averaging_constant": 0.5},
        weight_qconfig_kwargs={"reduce_range": True},
    ).apply_structure(model)
    assert model.classifier.input_fake_quant.averaging_constant == 0.5
    assert model.classifier.weight_fake_quant.averaging_constant == 0.01
    assert (
        model.classifier.weight_fake_quant.quant_min,
        model.classifier.weight_fake_quant.quant_max,
    ) == (-64, 63)
    assert model.classifier.input_fake_quant.quant_max == 255
    with pytest.raises(ValueError, match="averaging_constant must be within"):
        QuantizationModifier(activation_qconfig_kwargs={"averaging_constant": 2})
    with pytest.raises(ValueError, match="not both"):
        QuantizationModifier(weight_qconfig_kwargs={}, scheme="default")


class MyLinear(torch.nn.Linear):
    """A Linear subclass that keeps Linear's forward (a custom quantizable type)."""


class OwnForwardLinear(torch.nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return super().forward(x) * 2


class Net(torch.nn.Module):
    def __init__(self, second: type = MyLinear):
        super().__init__()
        self.first = torch.nn.Linear(4, 8)
        self.second = second(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.second(torch.relu(self.first(x)))


def _modify(model: torch.nn.Module, recipe: str) -> Manager:
    manager = Manager(recipe)
    manager.modify(model, torch.optim.SGD(model.parameters(), lr=0.1), 1)
    return manager


def test_custom_quantizable_module_types_quantize_linear_subclasses():
    plain = Net()
    QuantizationModifier().apply_structure(plain)
    assert not isinstance(plain.second, QuantizedLinear)  # not an exact nn.Linear: left alone

    model = Net()
    expected = model(torch.ones(2, 4))
    QuantizationModifier(custom_quantizable_module_types=["MyLinear"]).apply_structure(model)
    assert isinstance(model.second, QuantizedLinear) and isinstance(model.second, MyLinear)
    assert hasattr(model.second, "weight_fake_quant")
    assert model(torch.ones(2, 4)).shape == expected.shape

    recipe = "modifiers:\n  - !QuantizationModifier\n      custom_quantizable_module_types: [{}]\n"
    with pytest.raises(ModelMatchError, match="'OwnForwardLinear' cannot be quantized"):
        _modify(Net(OwnForwardLinear), recipe.format("OwnForwardLinear"))
    with pytest.raises(ModelMatchError, match="'Conv2d' is no module class"):
        _modify(Net(), recipe.format("Conv2d"))


SCHEME_RECIPE = """
modifiers:
  - !QuantizationModifier
      start_epoch: 0.0
      scheme: default
      {field}
      {strict}
"""


@pytest.mark.parametrize(
    ("field", "entry"),
    [
        ("ignore: [bert.nothing]", "bert.nothing"),
        ("ignore: [NoSuchClass]", "NoSuchClass"),
        ("ignore: ['re:.*nothing.*']", "re:.*nothing.*"),
        ("scheme_overrides: {Conv2d: default}", "Conv2d"),
        ("scheme_overrides: {bert.encoder.layer.9: default}", "bert.encoder.layer.9"),
    ],
)
def test_entries_matching_nothing_are_errors_at_modify(field, entry):
    model = make_tiny_model("text-classification")
    recipe = SCHEME_RECIPE.format(field=field, strict="")
    Recipe.load(recipe)  # the recipe itself is valid; the model does not fit it
    with pytest.raises(ModelMatchError, match=f"entry '{entry}' matches no module"):
        _modify(model, recipe)
    assert not fake_quantizers(model)


def test_strict_false_only_logs(caplog):
    model = make_tiny_model("text-classification")
    recipe = SCHEME_RECIPE.format(field="ignore: [LayerNorm, NoSuchClass]", strict="strict: false")
    with caplog.at_level(logging.WARNING, logger=qmod.__name__):
        _modify(model, recipe)
    assert any("'NoSuchClass' matches no module" in r.message for r in caplog.records)


def test_entries_naming_classes_kinds_and_modules_are_accepted():
    model = make_tiny_model("text-classification")
    recipe = SCHEME_RECIPE.format(
        field="ignore: [LayerNorm, QATMatMul, bert.pooler]\n      "
        "scheme_overrides: {Embedding: default, 're:.*classifier': default}",
        strict="",
    )
    _modify(model, recipe).update()  # start_epoch 0: QAT starts at the first update
    quantizers = fake_quantizers(model)
    assert "classifier.weight_fake_quant" in quantizers
    assert not any(name.startswith("bert.pooler") for name in quantizers)


def test_bad_recipe_field_is_a_recipe_error():
    with pytest.raises(RecipeError, match="strict"):
        Recipe.load("modifiers:\n  - !QuantizationModifier\n      strict: maybe\n")


def test_model_trained_with_the_sparseml_recipe_reloads_exactly(train, tmp_path):
    from sparseforge.checkpoint import RECIPE_FILE, load_task_model

    model = make_tiny_model("text-classification")
    train(model, SPARSEML_SAVED.read_text(), steps=4, steps_per_epoch=2)
    model.eval()
    model.save_pretrained(str(tmp_path))
    (tmp_path / RECIPE_FILE).write_text(SPARSEML_SAVED.read_text())  # the file as SparseML wrote it
    reloaded = load_task_model(tmp_path, "text-classification")
    assert fake_quantizers(reloaded).keys() == fake_quantizers(model).keys()
    ids = torch.randint(5, 100, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reloaded(input_ids=ids).logits)
