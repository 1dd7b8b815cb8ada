"""GPTQModifier: weights on sparseforge's int grid, lower error than rounding, reload and export."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_model, write_tokenizer

import sparseforge
from sparseforge import RecipeError
from sparseforge.modifiers.pruning.calibrated import InputHessian, relative_error
from sparseforge.modifiers.quantization import GPTQModifier, QuantizationArgs
from sparseforge.recipe import Recipe
from sparseforge.transformers import load_model


def correlated(tokens: int = 256, columns: int = 32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(tokens, 6, generator=gen) @ torch.randn(6, columns, generator=gen)
    return base + 0.2 * torch.randn(tokens, columns, generator=gen)


@pytest.mark.parametrize("bits", [4, 8])
def test_gptq_is_on_the_grid_and_beats_round_to_nearest(bits):
    from sparseforge.modifiers.quantization.gptq import gptq_quantize

    torch.manual_seed(0)
    weight = torch.randn(16, 32)
    weight[:, ::5] = 0.0  # pruned weights must stay pruned
    x = correlated()
    h = InputHessian(32)
    h.add(x)
    fq = QuantizationArgs(num_bits=bits, symmetric=True, strategy="channel").fake_quantize(
        channels=16
    )
    fq.observe(weight)
    quantized = gptq_quantize(weight, h.matrix, fq, block_size=8)
    fq.observer_enabled = False
    levels = quantized / fq.scale.unsqueeze(1)
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert levels.min() >= fq.quant_min - 1e-4 and levels.max() <= fq.quant_max + 1e-4
    assert torch.equal(fq(quantized), quantized)  # a fixed point of the exported fake quantizer
    assert bool((quantized[:, ::5] == 0).all())
    rounded = fq(weight)
    assert relative_error(weight, quantized, h.matrix) < relative_error(weight, rounded, h.matrix)


def test_gptq_after_sparsegpt_reloads_and_exports(tmp_path):
    model = make_tiny_model()
    gen = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(5, 100, (1, 12), generator=gen)} for _ in range(6)]
    recipe = (
        "oneshot_modifiers:\n  - !SparseGPTModifier {sparsity: 0.5, block_size: 16}\n"
        "  - !GPTQModifier {scheme: W4A16, block_size: 16}\n"
    )
    out = tmp_path / "gptq"
    result = sparseforge.oneshot(model, recipe, batches, output_dir=out)
    query = model.bert.encoder.layer[0].attention.self.query
    # SparseGPT's zeros stay zero (small kept weights may round to zero too)
    assert 0.5 <= float((query.weight == 0).float().mean()) < 0.52
    assert query.weight_fake_quant.quant_max == 7 and not query.weight_fake_quant.observer_enabled
    assert result.report["modules"]["bert.encoder.layer.0.attention.self.query"]["bits"] == 4
    reloaded = load_model(out, "text-classification")
    torch.testing.assert_close(reloaded(**batches[0]).logits, model(**batches[0]).logits)
    write_tokenizer(out)
    from sparseforge.export.deployment import REPORT_FILE, to_onnx

    report = json.loads(
        (to_onnx(out, "text-classification", sequence_length=16) / REPORT_FILE).read_text()
    )
    assert (
        report["verification"]["max_abs_diff"]
        <= report["verification"]["tolerance"]["max_abs_diff"]
    )


def test_gptq_fields_are_validated():
    with pytest.raises(RecipeError, match="weights only"):
        Recipe.from_text("modifiers:\n  - !GPTQModifier {scheme: W8A8}\n")
    with pytest.raises(RecipeError, match="symmetric"):
        Recipe.from_text(
            "modifiers:\n  - !GPTQModifier {scheme: {input_activations: null, weights: {num_bits: 8, symmetric: false}}}\n"
        )
    assert GPTQModifier().weight_args.num_bits == 8
