"""Quantized attention matmuls through transformers' public attention extension point.

SparseML forked BERT's self-attention to put `QATMatMul` modules around Q.K^T and probs.V. Here
the same inputs are fake-quantized by an attention function registered with
`transformers.AttentionInterface` under the name `sparseforge_qat` (plus the eager mask
function under the same name in `AttentionMaskInterface`), and the model is switched to it with
`set_attn_implementation`. The four quantizers live in a child module `matmul_fake_quant` of
each quantized attention module, so they are saved with the model. Attention modules without
that child (outside `submodules`, or ignored) run the plain eager computation.

transformers is imported only when a model actually has such attention modules, so the
modifiers package keeps no hard dependency on it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from sparseforge.modifiers.quantization.scheme import QuantizationArgs

logger = logging.getLogger(__name__)

ATTN_IMPLEMENTATION = "sparseforge_qat"
_registered = False


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


def use_quantized_attention(model: nn.Module, attention_modules: list[nn.Module]) -> None:
    """Switch `model` (and the configs of `attention_modules`) to the quantized attention function."""
    register_attention()
    setter = getattr(model, "set_attn_implementation", None)
    if callable(setter):
        setter(ATTN_IMPLEMENTATION)
    for module in attention_modules:
        if module.config._attn_implementation != ATTN_IMPLEMENTATION:
            module.config._attn_implementation = ATTN_IMPLEMENTATION
    logger.debug(
        "attention implementation set to %s for %d module(s)",
        ATTN_IMPLEMENTATION,
        len(attention_modules),
    )
