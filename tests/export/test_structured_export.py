"""ONNX export of structurally compacted models (uneven heads per layer), FP32 and INT8 QAT."""

import json

import pytest
import torch
from conftest import VOCAB, write_tokenizer
from structured_models import make_model, train

from sparseforge import Manager
from sparseforge.export.deployment import REPORT_FILE, to_onnx

pytestmark = pytest.mark.slow  # every test here trains, compacts and exports a model

STRUCTURED = """
pruning_modifiers:
  - !GroupPruningModifier
    start_epoch: 0.0
    end_epoch: 1.0
    update_frequency: 0.5
    final_sparsity: {heads: 0.5, neurons: 0.6, layers: 0.34}
"""
QAT = """
quantization_modifiers:
  - !QuantizationModifier
    start_epoch: 1.5
    disable_quantization_observer_epoch: 2.5
    quantize_embeddings: 1
    quantize_linear_activations: 0
    exclude_module_types: ['LayerNorm', 'Tanh']
    submodules: [FAMILY.embeddings, FAMILY.encoder, classifier]
"""


@pytest.mark.parametrize("family, qat", [("bert", False), ("roberta", True)])
def test_compacted_model_exports_and_verifies(tmp_path, family, qat):
    model = make_model(family, vocab=len(VOCAB))
    recipe = STRUCTURED + (QAT.replace("FAMILY", family) if qat else "")
    manager = Manager(recipe)
    optimizer = manager.modify(
        model, torch.optim.AdamW(model.parameters(), lr=1e-3), steps_per_epoch=4
    )
    train(model, optimizer, manager, 12 if qat else 5)
    manager.finalize(model)
    heads = [
        layer.attention.self.query.out_features // 8
        for layer in getattr(model, family).encoder.layer
    ]
    assert len(heads) == 2 and sum(heads) == 4
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    write_tokenizer(folder)
    manager.recipe.save(folder / "recipe.yaml")
    target = to_onnx(folder, "text-classification", sequence_length=16, num_samples=4)
    report = json.loads((target / REPORT_FILE).read_text())
    assert report["precision"] == ("int8 QDQ" if qat else "fp32")
    assert report["verification"]["argmax_agreement"] == 1.0
    dense = make_model(family, vocab=len(VOCAB))
    dense.save_pretrained(tmp_path / "dense")
    assert (folder / "model.safetensors").stat().st_size < (
        tmp_path / "dense" / "model.safetensors"
    ).stat().st_size


def test_distilbert_with_uneven_heads_exports_and_verifies(tmp_path):
    from sparseforge.modifiers.pruning.compaction import compact_model

    model = make_model("distilbert", vocab=len(VOCAB))
    keep_neurons = [torch.arange(40), torch.arange(64), torch.arange(20)]
    compact_model(model, [0, 2], [[0, 1], [1], [0, 2, 3]], keep_neurons)
    folder = tmp_path / "distil"
    model.save_pretrained(folder)
    write_tokenizer(folder)
    target = to_onnx(folder, "text-classification", sequence_length=16, num_samples=4)
    report = json.loads((target / REPORT_FILE).read_text())
    assert report["precision"] == "fp32" and report["verification"]["passed"]
