"""Linear and Embedding with fake-quantized inputs, weights and outputs.

QAT changes the class of an existing `nn.Linear` / `nn.Embedding` *instance* to the subclass
below and adds the fake quantizers as children. The module object, its Parameters, their names
(`...query.weight`) and any hooks stay the same, so the optimizer, pruning masks (kept per
parameter name, enforced on the same Parameter) and tied weights keep working. The quantizers'
scales are buffers (`...query.weight_fake_quant.scale`), saved with the model.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from sparseforge.modifiers.quantization.scheme import QuantizationScheme


class QuantizedLinear(nn.Linear):
    """nn.Linear with optional `input_fake_quant`, `weight_fake_quant`, `output_fake_quant`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        input_quant = self._modules.get("input_fake_quant")
        weight_quant = self._modules.get("weight_fake_quant")
        output_quant = self._modules.get("output_fake_quant")
        if input_quant is not None:
            x = input_quant(x)
        weight = weight_quant(self.weight) if weight_quant is not None else self.weight
        y = F.linear(x, weight, self.bias)
        return output_quant(y) if output_quant is not None else y


class QuantizedEmbedding(nn.Embedding):
    """nn.Embedding with optional `weight_fake_quant` and `output_fake_quant`."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        weight_quant = self._modules.get("weight_fake_quant")
        output_quant = self._modules.get("output_fake_quant")
        # In training, only the looked-up rows are rounded (same values and gradients as rounding
        # the table, a fraction of the cost for a 30k-word vocabulary). The exported graph keeps
        # the table's QDQ pair, and max_norm (which rewrites looked-up rows) keeps the plain path.
        rows_only = (
            weight_quant is not None and self.max_norm is None and not torch.compiler.is_exporting()
        )
        if rows_only:
            if weight_quant.observer_enabled:
                weight_quant.observe(self.weight)
            weight = self.weight
        else:
            weight = weight_quant(self.weight) if weight_quant is not None else self.weight
        y = F.embedding(
            ids,
            weight,
            self.padding_idx,
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
            self.sparse,
        )
        if rows_only:
            y = weight_quant.fake_quantize_rows(y, ids)
        return output_quant(y) if output_quant is not None else y


QUANTIZED_CLASSES: dict[type, type] = {nn.Linear: QuantizedLinear, nn.Embedding: QuantizedEmbedding}


def quantized_class(cls: type) -> type | None:
    """The quantized class for `cls`: QuantizedLinear / QuantizedEmbedding for the exact torch
    classes; for a subclass that keeps the parent's `forward` (`custom_quantizable_module_types`),
    a subclass of both, made once. None when `cls` cannot be quantized."""
    if cls in QUANTIZED_CLASSES:
        return QUANTIZED_CLASSES[cls]
    for base, quantized in ((nn.Linear, QuantizedLinear), (nn.Embedding, QuantizedEmbedding)):
        if issubclass(cls, base) and cls.forward is base.forward:
            QUANTIZED_CLASSES[cls] = type(f"Quantized{cls.__name__}", (quantized, cls), {})
            return QUANTIZED_CLASSES[cls]
    return None


def quantize_module_(module: nn.Module, scheme: QuantizationScheme) -> bool:
    """Turn an nn.Linear / nn.Embedding (or a subclass `quantized_class` takes) into its quantized
    subclass in place; False if it is not one."""
    if isinstance(module, (QuantizedLinear, QuantizedEmbedding)):
        return False
    target = quantized_class(type(module))
    if target is None:
        return False
    device = module.weight.device
    module.__class__ = target
    if scheme.input_activations is not None and issubclass(target, QuantizedLinear):
        module.add_module("input_fake_quant", scheme.input_activations.fake_quantize().to(device))
    if scheme.weights is not None:
        # Output channels are dim 0 of a Linear weight and, for an embedding, its rows.
        fq = scheme.weights.fake_quantize(
            channels=module.weight.shape[0], columns=module.weight.shape[1]
        )
        module.add_module("weight_fake_quant", fq.to(device))
    if scheme.output_activations is not None:
        module.add_module("output_fake_quant", scheme.output_activations.fake_quantize().to(device))
    return True


def is_quantized(module: nn.Module) -> bool:
    return isinstance(module, (QuantizedLinear, QuantizedEmbedding)) or hasattr(
        module, "matmul_fake_quant"
    )
