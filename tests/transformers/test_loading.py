"""load_model: task aliases, recipe structure before weights, exact reload of QAT checkpoints."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model, write_tokenizer

from sparseforge import Manager, ModelMatchError, SparseforgeError
from sparseforge.modifiers.quantization import QuantizedLinear, fake_quantizers
from sparseforge.transformers import load_model

RECIPE = """
modifiers:
  - !QuantizationModifier
      start_epoch: {start}
      disable_quantization_observer_epoch: 1.0
      submodules: [bert.encoder, qa_outputs]
"""


def train_and_save(directory, start: float = 0.0, steps: int = 4):
    model = make_tiny_model("question-answering").train()
    manager = Manager(RECIPE.format(start=start))
    optimizer = manager.modify(
        model, torch.optim.AdamW(model.parameters(), lr=1e-3), steps_per_epoch=2
    )
    for step in range(steps):
        ids = torch.randint(5, 100, (4, 12), generator=torch.Generator().manual_seed(step))
        positions = torch.randint(0, 12, (4,), generator=torch.Generator().manual_seed(step))
        loss = manager.loss_update(
            model(input_ids=ids, start_positions=positions, end_positions=positions).loss
        )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    manager.finalize(model)
    model.eval()
    model.save_pretrained(str(directory))
    (directory / "recipe.yaml").write_text(manager.recipe.to_yaml())
    write_tokenizer(directory)
    return model


def test_qat_checkpoint_reloads_with_identical_outputs(tmp_path):
    model = train_and_save(tmp_path / "qat")
    assert fake_quantizers(model)
    reloaded = load_model(tmp_path / "qat", "qa")
    assert isinstance(reloaded.bert.encoder.layer[0].attention.self.query, QuantizedLinear)
    assert all(not q.observer_enabled for q in fake_quantizers(reloaded).values())
    ids = torch.randint(5, 100, (3, 20))
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    with torch.no_grad():
        expected, got = (
            model(input_ids=ids, attention_mask=mask),
            reloaded(input_ids=ids, attention_mask=mask),
        )
    assert torch.equal(expected.start_logits, got.start_logits)
    assert torch.equal(expected.end_logits, got.end_logits)
    # reloading again does not move the scales (observers stay frozen in eval)
    scale = reloaded.qa_outputs.input_fake_quant.scale.clone()
    reloaded(input_ids=ids)
    assert torch.equal(reloaded.qa_outputs.input_fake_quant.scale, scale)


def test_checkpoint_saved_before_qat_started_loads_as_float(tmp_path):
    model = train_and_save(tmp_path / "early", start=5.0, steps=2)
    assert not fake_quantizers(model)
    reloaded = load_model(tmp_path / "early", "question-answering")
    assert not fake_quantizers(reloaded)
    ids = torch.randint(5, 100, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).start_logits, reloaded(input_ids=ids).start_logits)


def test_quantized_weights_without_recipe_are_refused(tmp_path):
    train_and_save(tmp_path / "qat")
    (tmp_path / "qat" / "recipe.yaml").unlink()
    with pytest.raises(ModelMatchError, match="recipe"):
        load_model(tmp_path / "qat", "qa")


def test_weights_that_do_not_fit_are_refused(tmp_path):
    model = make_tiny_model("text-classification")
    model.save_pretrained(str(tmp_path / "cls"))
    (tmp_path / "cls" / "recipe.yaml").write_text(
        "modifiers:\n  - !QuantizationModifier\n      submodules: [bert.encoder]\n"
    )
    # a recipe whose structure the weights do not carry, with quantization state from elsewhere
    state_path = tmp_path / "cls" / "model.safetensors"
    from safetensors.torch import load_file, save_file

    state = load_file(str(state_path))
    state["bert.encoder.layer.0.attention.self.query.weight_fake_quant.scale"] = torch.ones(())
    save_file(state, str(state_path))
    with pytest.raises(ModelMatchError, match="missing from the checkpoint"):
        load_model(tmp_path / "cls", "text-classification")


def test_aliases_tied_weights_and_missing_folder(tmp_path):
    model = make_tiny_model("masked-language-modeling")
    model.save_pretrained(str(tmp_path / "mlm"))
    reloaded = load_model(tmp_path / "mlm", "mlm")
    assert type(reloaded).__name__ == "BertForMaskedLM"
    ids = torch.randint(5, 100, (1, 6))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reloaded(input_ids=ids).logits)
    with pytest.raises(SparseforgeError, match="config.json"):
        load_model(tmp_path / "nothing", "glue")
    with pytest.raises(SparseforgeError, match="unknown task"):
        load_model(tmp_path / "mlm", "translation")
