"""Quantized attention matmuls: the quantizers and the attention function, no Hugging Face import.

SparseML forked BERT's self-attention to put `QATMatMul` modules around Q.K^T and probs.V. Here
the same inputs are fake-quantized by `quantized_attention_forward`, an eager attention function
in the signature of transformers' attention interface. The four quantizers live in a child
module `matmul_fake_quant` of each quantized attention module, so they are saved with the model.
Attention modules without that child (outside `submodules`, or ignored) run the plain eager
computation.

Switching a model's attention to that function is the model library's business: its layer
registers an *attention hook* here with `set_attention_hook` (sparseforge's Hugging Face layer
registers one that uses `transformers.AttentionInterface` and `set_attn_implementation`), and
the QuantizationModifier calls whatever hook is registered. This package imports no Hugging Face
code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from sparseforge.errors import ModelMatchError
from sparseforge.modifiers.quantization.scheme import QuantizationArgs

logger = logging.getLogger(__name__)

# The name the attention function is registered under by the model library's hook.
ATTN_IMPLEMENTATION = "sparseforge_qat"

# (model, attention modules that now hold `matmul_fake_quant`) -> None: route those modules'
# attention through `quantized_attention_forward`.
AttentionHook = Callable[[nn.Module, Sequence[nn.Module]], None]
_attention_hook: AttentionHook | None = None


class AttentionQuantizers(nn.Module):
    """The fake quantizers of the two attention matmuls' inputs (SparseML's QATMatMul)."""

    def __init__(self, args: QuantizationArgs):
        super().__init__()
        for name in ("query", "key", "probs", "value"):
            self.add_module(name, args.fake_quantize())


def is_attention_module(module: nn.Module) -> bool:
    """A transformers attention layer that dispatches through the attention interface."""
    config = getattr(module, "config", None)
    return (
        config is not None
        and hasattr(config, "_attn_implementation")
        and hasattr(module, "scaling")
        and all(hasattr(module, attr) for attr in ("query", "key", "value"))
    )


def quantized_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention whose matmul inputs pass through `module.matmul_fake_quant` if present."""
    quant: AttentionQuantizers | None = getattr(module, "matmul_fake_quant", None)
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    if quant is not None:
        # Scale Q before quantizing it (not the S x S scores after the matmul): the same math on a
        # tensor head_dim/seq_len the size, and Q.K^T then feeds its integer matmul directly.
        query, key, value = quant.query(query * scaling), quant.key(key), quant.value(value)
        scores = torch.matmul(query, key.transpose(2, 3))
    else:
        scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = nn.functional.softmax(scores, dim=-1)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    if quant is not None:
        probs = quant.probs(probs)
    output = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return output, probs


def set_attention_hook(hook: AttentionHook | None) -> AttentionHook | None:
    """Register the hook that switches a model's attention to the quantized function; returns
    the previous one (None unregisters)."""
    global _attention_hook
    previous, _attention_hook = _attention_hook, hook
    return previous


def attention_hook() -> AttentionHook | None:
    """The registered attention hook, if any."""
    return _attention_hook


def use_quantized_attention(model: nn.Module, attention_modules: Sequence[nn.Module]) -> None:
    """Route `attention_modules` of `model` through the quantized attention (the registered hook)."""
    if _attention_hook is None:
        raise ModelMatchError(
            f"{len(attention_modules)} attention module(s) to quantize (QATMatMul) but no attention "
            "hook is registered: `import sparseforge` registers the Hugging Face one; for another "
            "model library call sparseforge.modifiers.quantization.set_attention_hook, or add "
            "QATMatMul to the modifier's ignore / exclude_module_types"
        )
    _attention_hook(model, attention_modules)
    logger.debug("quantized attention switched on for %d module(s)", len(attention_modules))
