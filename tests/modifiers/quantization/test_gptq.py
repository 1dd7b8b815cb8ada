"""GPTQModifier: weights on sparseforge's int grid, lower error than rounding, reload and export."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_model, write_tokenizer

import sparseforge
from sparseforge import ExportError, ModelMatchError, RecipeError
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


@pytest.mark.slow
def test_gptq_after_sparsegpt_reloads_and_exports(tmp_path):
    model = make_tiny_model()
    gen = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(5, 100, (1, 12), generator=gen)} for _ in range(6)]
    recipe = (
        "oneshot_modifiers:\n  - !SparseGPTModifier {sparsity: 0.5, block_size: 16}\n"
        "  - !GPTQModifier\n      scheme: {weights: {num_bits: 4, symmetric: true, strategy: channel}}\n"
        "      block_size: 16\n"
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


# ----- group_size (strategy: group) ----------------------------------------------------------------
def test_group_scales_and_rounding_equal_a_direct_per_group_computation():
    torch.manual_seed(0)
    weight = torch.randn(6, 32)
    args = QuantizationArgs(num_bits=4, symmetric=True, group_size=8)
    assert args.strategy == "group"  # a group_size alone means strategy: group
    fq = args.fake_quantize(channels=6, columns=32)
    fq.observe(weight)
    assert fq.scale.shape == (6, 4)
    for row in range(6):
        for group in range(4):
            block = weight[row, group * 8 : (group + 1) * 8]
            scale = block.abs().max() / 7.5  # symmetric 4-bit grid [-8, 7]
            assert torch.isclose(fq.scale[row, group], scale)
            # each group alone, rounded per tensor with its own scale
            expected = torch.fake_quantize_per_tensor_affine(block, float(scale), 0, -8, 7)
            torch.testing.assert_close(fq(weight)[row, group * 8 : (group + 1) * 8], expected)


def test_gptq_with_groups_is_on_the_group_grid_and_beats_per_channel_at_int4():
    from sparseforge.modifiers.quantization.gptq import gptq_quantize

    torch.manual_seed(0)
    weight = torch.randn(16, 32)
    weight[:, 3] *= 8.0  # an outlier column: one per-channel scale wastes the grid on it
    h = InputHessian(32)
    h.add(correlated())
    results = {}
    for strategy, extra in (("channel", {}), ("group", {"group_size": 8})):
        args = QuantizationArgs(num_bits=4, symmetric=True, strategy=strategy, **extra)
        fq = args.fake_quantize(channels=16, columns=32)
        fq.observe(weight)
        fq.observer_enabled = False
        quantized = gptq_quantize(weight, h.matrix, fq, block_size=8)
        assert torch.equal(fq(quantized), quantized)  # on the grid of its own scales
        results[strategy] = relative_error(weight, quantized, h.matrix)
    levels = quantized / fq.scale.repeat_interleave(8, dim=1)
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert results["group"] < results["channel"]


def test_group_size_is_validated():
    with pytest.raises(RecipeError, match="group_size >= 1"):
        Recipe.from_text(
            "modifiers:\n  - !GPTQModifier {scheme: {input_activations: null, weights: {num_bits: 4, symmetric: true, strategy: group}}}\n"
        )
    with pytest.raises(RecipeError, match="needs strategy: group"):
        Recipe.from_text(
            "modifiers:\n  - !GPTQModifier {scheme: {input_activations: null, weights: {num_bits: 4, symmetric: true, strategy: channel, group_size: 8}}}\n"
        )
    with pytest.raises(ValueError, match="needs a 2-D weight"):
        QuantizationArgs(num_bits=8, group_size=8).fake_quantize()  # no rows / columns to group
    from sparseforge.modifiers.quantization import QuantizationScheme

    with pytest.raises(ValueError, match="for weights only"):
        QuantizationScheme.model_validate({"input_activations": {"group_size": 8}})
    w4a16 = QuantizationScheme.load("W4A16").weights
    assert (w4a16.num_bits, w4a16.strategy, w4a16.group_size) == (4, "group", 128)


@pytest.mark.parametrize(
    ("scheme", "message"),
    [
        (
            "{input_activations: null, weights: {num_bits: 4, symmetric: true, group_size: 24}}",
            "24 does not divide",
        ),
        ("W4A16", "group_size 128 does not divide the weight's 32 input columns"),
    ],
)
def test_group_size_that_does_not_divide_the_inputs_is_refused_before_any_work(
    tmp_path, scheme, message
):
    model = make_tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(5, 100, (1, 12), generator=gen)} for _ in range(4)]
    with pytest.raises(ModelMatchError, match=message) as raised:
        sparseforge.oneshot(
            model,
            f"oneshot_modifiers:\n  - !GPTQModifier {{scheme: {scheme}}}\n",
            batches,
            output_dir=tmp_path / "out",
        )
    assert "bert.encoder.layer.0.attention.self.query" in str(raised.value)
    assert not (tmp_path / "out").exists()
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


GROUPED = (
    "oneshot_modifiers:\n  - !GPTQModifier\n"
    "      scheme: {weights: {num_bits: 4, symmetric: true, strategy: group, group_size: 16}}\n"
    "      block_size: 16\n"
)


def test_gptq_groups_reload_and_export_refuses_them(tmp_path):
    model = make_tiny_model()
    gen = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(5, 100, (1, 12), generator=gen)} for _ in range(6)]
    out = tmp_path / "grouped"
    sparseforge.oneshot(model, GROUPED, batches, output_dir=out)
    query = model.bert.encoder.layer[0].attention.self.query
    assert query.weight_fake_quant.scale.shape == (32, 2)
    reloaded = load_model(out, "text-classification")
    assert reloaded.bert.encoder.layer[0].attention.self.query.weight_fake_quant.grouped
    torch.testing.assert_close(reloaded(**batches[0]).logits, model(**batches[0]).logits)
    write_tokenizer(out)
    from sparseforge.export.deployment import to_onnx

    with pytest.raises(ExportError, match="group_size"):
        to_onnx(out, "text-classification", sequence_length=16)


def test_gptq_groups_save_compressed_round_trip_with_plain_transformers(tmp_path):
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForSequenceClassification

    model = make_tiny_model()
    gen = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(5, 100, (1, 12), generator=gen)} for _ in range(6)]
    out = tmp_path / "compressed"
    sparseforge.oneshot(model, GROUPED, batches, output_dir=out, save_compressed=True)
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["format"] == "pack-quantized"
    weights = [group["weights"] for group in config["config_groups"].values()]
    assert weights and all(w["strategy"] == "group" and w["group_size"] == 16 for w in weights)
    assert all(w["num_bits"] == 4 and w["symmetric"] for w in weights)
    loaded = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    with torch.no_grad():
        for batch in batches:
            torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)


def test_quantization_modifier_groups_weights_and_embedding_rows(tmp_path):
    """Post-training quantization with group_size: Linear and Embedding weights per group; the
    embedding's row-wise path gives what rounding the whole table would."""
    from torch.nn import functional as F

    model = make_tiny_model()
    gen = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(5, 100, (1, 12), generator=gen)} for _ in range(4)]
    recipe = (
        "oneshot_modifiers:\n  - !QuantizationModifier\n"
        "      scheme: {weights: {num_bits: 4, symmetric: true, group_size: 16}}\n"
        "      ignore: [QATMatMul]\n"
    )
    sparseforge.oneshot(model, recipe, batches, output_dir=tmp_path / "ptq")
    dense = model.bert.encoder.layer[0].intermediate.dense
    assert dense.weight_fake_quant.scale.shape == (64, 2)
    words = model.bert.embeddings.word_embeddings
    fq = words.weight_fake_quant
    assert fq.grouped and fq.scale.shape == (words.num_embeddings, 2)
    ids = batches[0]["input_ids"]
    torch.testing.assert_close(words(ids), F.embedding(ids, fq(words.weight)))
    with pytest.raises(ModelMatchError, match="group_size 128 does not divide"):
        sparseforge.oneshot(
            make_tiny_model(),
            "oneshot_modifiers:\n  - !QuantizationModifier {scheme: W4A16}\n",
            batches,
        )
