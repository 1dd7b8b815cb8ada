"""Quantization-aware training: observers, fake-quant modules, schemes and the QuantizationModifier;
GPTQ one-shot weight quantization and SmoothQuant."""

from sparseforge.modifiers.quantization.attention import (
    ATTN_IMPLEMENTATION,
    attention_hook,
    set_attention_hook,
)
from sparseforge.modifiers.quantization.gptq import GPTQModifier
from sparseforge.modifiers.quantization.modifier import QuantizationModifier, quantization_summary
from sparseforge.modifiers.quantization.modules import QuantizedEmbedding, QuantizedLinear
from sparseforge.modifiers.quantization.observers import (
    FakeQuantize,
    fake_quantizers,
    set_observers,
)
from sparseforge.modifiers.quantization.scheme import QuantizationArgs, QuantizationScheme
from sparseforge.modifiers.quantization.smoothquant import SmoothQuantModifier

__all__ = [
    "ATTN_IMPLEMENTATION",
    "FakeQuantize",
    "GPTQModifier",
    "QuantizationArgs",
    "QuantizationModifier",
    "QuantizationScheme",
    "QuantizedEmbedding",
    "QuantizedLinear",
    "SmoothQuantModifier",
    "fake_quantizers",
    "attention_hook",
    "quantization_summary",
    "set_attention_hook",
    "set_observers",
]
