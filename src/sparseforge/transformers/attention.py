"""The Hugging Face attention hook QAT needs: `sparseforge_qat` in transformers' attention interface.

The QuantizationModifier (which imports no Hugging Face code) puts quantizers into attention
modules and asks the registered attention hook to route them through
`quantized_attention_forward`. This module is that hook for transformers models: it registers
the function with the public `AttentionInterface` (and the eager mask function with
`AttentionMaskInterface`) under `sparseforge_qat`, then switches the model with
`set_attn_implementation`. `install()` runs when `sparseforge` is imported; transformers itself
is imported only when a model's attention is switched.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from torch import nn

from sparseforge.modifiers.quantization.attention import (
    ATTN_IMPLEMENTATION,
    quantized_attention_forward,
    set_attention_hook,
)

logger = logging.getLogger(__name__)
_registered = False


def register_attention() -> None:
    """Register `sparseforge_qat` with transformers' attention and mask interfaces (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, quantized_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, eager_mask)
    _registered = True


def use_quantized_attention(model: nn.Module, attention_modules: Sequence[nn.Module]) -> None:
    """Switch `model` (and the configs of `attention_modules`) to the quantized attention function."""
    register_attention()
    setter = getattr(model, "set_attn_implementation", None)
    if callable(setter):
        setter(ATTN_IMPLEMENTATION)
    for module in attention_modules:
        if module.config._attn_implementation != ATTN_IMPLEMENTATION:
            module.config._attn_implementation = ATTN_IMPLEMENTATION


def install() -> None:
    """Make this the attention hook of the QuantizationModifier."""
    set_attention_hook(use_quantized_attention)
