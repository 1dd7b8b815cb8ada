"""In-place quantized Linear/Embedding: same module, same Parameters, quantizers as children."""

from __future__ import annotations

import pytest
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


@pytest.mark.parametrize("strategy", ["tensor", "channel"])
def test_embedding_rounds_looked_up_rows_exactly_as_the_whole_table(strategy):
    """The training path rounds only the gathered rows; values, gradients and observed scales
    must equal rounding the whole table and then looking rows up."""
    torch.manual_seed(0)
    scheme = QuantizationScheme(weights=QuantizationArgs(symmetric=True, strategy=strategy))
    embedding = torch.nn.Embedding(50, 8, padding_idx=0)
    reference = torch.nn.Embedding(50, 8, padding_idx=0)
    reference.load_state_dict(embedding.state_dict())
    for module in (embedding, reference):
        quantize_module_(module, scheme)
    ids = torch.tensor([[0, 3, 7, 3], [49, 1, 2, 0]])
    for step in range(3):  # observers update over steps; scales must stay identical
        out = embedding(ids)
        ref_quant = reference.weight_fake_quant
        expected = torch.nn.functional.embedding(ids, ref_quant(reference.weight), padding_idx=0)
        assert torch.equal(out, expected), step
        assert not torch.equal(out, torch.nn.functional.embedding(ids, embedding.weight))
        grad_out = torch.randn_like(out)
        out.backward(grad_out)
        expected.backward(grad_out)
        assert torch.equal(embedding.weight.grad, reference.weight.grad)
        assert torch.equal(embedding.weight_fake_quant.scale, ref_quant.scale)
        with torch.no_grad():  # move the weights so the next observation differs
            for module in (embedding, reference):
                module.weight.add_(module.weight.grad * 0.5)
                module.weight.grad = None
