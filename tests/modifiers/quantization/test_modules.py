"""In-place quantized Linear/Embedding: same module, same Parameters, quantizers as children."""

from __future__ import annotations

import torch

from sparseforge.modifiers.quantization.modules import (
    QuantizedEmbedding,
    QuantizedLinear,
    is_quantized,
    quantize_module_,
)
from sparseforge.modifiers.quantization.scheme import QuantizationArgs, QuantizationScheme


def test_linear_keeps_identity_and_quantizes():
    torch.manual_seed(0)
    linear = torch.nn.Linear(8, 4)
    weight, bias = linear.weight, linear.bias
    hook_calls = []
    linear.register_forward_hook(lambda *args: hook_calls.append(1))
    assert quantize_module_(linear, QuantizationScheme(output_activations=QuantizationArgs()))
    assert isinstance(linear, QuantizedLinear) and is_quantized(linear)
    assert linear.weight is weight and linear.bias is bias
    assert set(dict(linear.named_children())) == {
        "input_fake_quant",
        "weight_fake_quant",
        "output_fake_quant",
    }
    x = torch.randn(3, 8)
    y = linear(x)
    assert hook_calls == [1]
    assert not torch.equal(y, torch.nn.functional.linear(x, weight, bias))
    assert torch.allclose(y, torch.nn.functional.linear(x, weight, bias), atol=0.1)
    assert "weight_fake_quant.scale" in linear.state_dict()


def test_embedding_without_input_quantizer():
    embedding = torch.nn.Embedding(10, 4, padding_idx=0)
    assert quantize_module_(embedding, QuantizationScheme())
    assert isinstance(embedding, QuantizedEmbedding)
    assert "input_fake_quant" not in dict(embedding.named_children())
    out = embedding(torch.tensor([[0, 3]]))
    assert out.shape == (1, 2, 4) and bool((out[0, 0] == 0).all())


def test_other_modules_are_left_alone():
    norm = torch.nn.LayerNorm(4)
    assert not quantize_module_(norm, QuantizationScheme())
    assert type(norm) is torch.nn.LayerNorm
