"""QuantizationScheme defaults, aliases, validation, and the legacy field mapping."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sparseforge.modifiers.quantization.scheme import (
    ATTENTION,
    EMBEDDING,
    LINEAR,
    QuantizationArgs,
    QuantizationScheme,
    legacy_schemes,
)


def test_defaults_are_sparseml_defaults():
    scheme = QuantizationScheme()
    assert scheme.input_activations == QuantizationArgs(
        num_bits=8, symmetric=False, strategy="tensor"
    )
    assert scheme.weights == QuantizationArgs(num_bits=8, symmetric=True, strategy="tensor")
    assert scheme.output_activations is None
    act = scheme.input_activations.fake_quantize()
    assert (act.quant_min, act.quant_max) == (0, 255)
    weight = scheme.weights.fake_quantize(channels=3)
    assert (weight.quant_min, weight.quant_max) == (-128, 127) and not weight.per_channel


def test_load_aliases_and_dicts():
    assert QuantizationScheme.load(None) == QuantizationScheme()
    assert QuantizationScheme.load("tensorrt").input_activations.symmetric is True
    loaded = QuantizationScheme.load(
        {
            "weights": {"num_bits": 8, "symmetric": True, "strategy": "channel"},
            "input_activations": "null",
        }
    )
    assert loaded.input_activations is None
    assert loaded.weights.fake_quantize(channels=5).scale.shape == (5,)
    with pytest.raises(ValueError, match="unknown scheme alias"):
        QuantizationScheme.load("fastest")


def test_validation_errors():
    with pytest.raises(ValidationError):
        QuantizationArgs(strategy="group")
    with pytest.raises(ValidationError):
        QuantizationArgs(num_bits=16)
    with pytest.raises(ValidationError):
        QuantizationScheme.load({"weight": {"num_bits": 8}})


def test_legacy_mapping():
    schemes = legacy_schemes(
        activation_bits=8,
        weight_bits=4,
        reduce_range=False,
        tensorrt=False,
        quantize_linear_activations=False,
        quantize_embedding_activations=True,
    )
    assert schemes[LINEAR].input_activations is not None  # inputs are always quantized
    assert schemes[LINEAR].output_activations is None
    assert schemes[LINEAR].weights.num_bits == 4
    assert (
        schemes[EMBEDDING].input_activations is None
        and schemes[EMBEDDING].output_activations is not None
    )
    assert schemes[ATTENTION].weights is None
    trt = legacy_schemes(
        activation_bits=8,
        weight_bits=8,
        reduce_range=True,
        tensorrt=True,
        quantize_linear_activations=True,
        quantize_embedding_activations=True,
    )
    assert trt[LINEAR].input_activations.symmetric and trt[LINEAR].output_activations is None
    assert trt[EMBEDDING].output_activations is None
    assert trt[LINEAR].weights.fake_quantize().quant_min == -64


def test_llm_compressor_presets():
    from sparseforge.modifiers.quantization.scheme import QuantizationScheme

    w8a8 = QuantizationScheme.load("W8A8")
    assert (
        w8a8.weights.num_bits == 8 and w8a8.weights.strategy == "channel" and w8a8.weights.symmetric
    )
    assert w8a8.input_activations.num_bits == 8 and w8a8.input_activations.symmetric
    w4a16 = QuantizationScheme.load("w4a16")
    assert w4a16.input_activations is None and w4a16.weights.num_bits == 4
    assert QuantizationScheme.load("W8A16").input_activations is None
    with pytest.raises(ValueError, match="W8A8, W8A16, W4A16"):
        QuantizationScheme.load("W3A3")
