"""GPTQ (Frantar et al., arXiv 2210.17323): one-shot weight quantization with error feedback.

Like SparseGPT, column by column with U the upper Cholesky factor of (H + damp I)^-1, but each
column is rounded to the integer grid instead of pruned, and the rounding error is moved onto the
columns not yet quantized. The grid is the one sparseforge's fake quantizer uses (symmetric,
per output channel or per tensor, scale from the weight's range), so the quantized weights are
fixed points of the `weight_fake_quant` module installed afterwards: the model reloads
(`apply_structure`) and exports to the same QDQ ONNX as QAT. Weights already zero (pruned by an
earlier SparseGPT or Wanda) stay zero. Weight-only: W8A16 (per channel) or W4A16 (groups of 128).

With `strategy: group, group_size: g` (llm-compressor's fields) each row has one scale per g input
columns, observed on the weight before GPTQ runs (llm-compressor's static groups: the scales do not
follow the error feedback, so they are the ones the fake quantizer holds afterwards). Grouped
weights reload and save compressed (`pack-quantized`, group strategy); ONNX export refuses them.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import field_validator, model_validator
from torch import nn

from sparseforge.errors import ModelMatchError
from sparseforge.modifiers.base import register
from sparseforge.modifiers.pruning.calibrated import InputHessian, LayerwiseModifier, relative_error
from sparseforge.modifiers.pruning.sparsegpt import inverse_cholesky
from sparseforge.modifiers.quantization.modules import is_quantized, quantize_module_
from sparseforge.modifiers.quantization.observers import FakeQuantize
from sparseforge.modifiers.quantization.scheme import QuantizationArgs, QuantizationScheme


def _round_column(column: torch.Tensor, fq: FakeQuantize, index: int) -> torch.Tensor:
    """Round weight column `index` (rows, 1) onto the fake quantizer's grid, as its forward would
    (with groups: the scales of the column's group)."""
    scale = fq.scale[:, index // fq.group_size] if fq.grouped else fq.scale
    zero_point = torch.zeros_like(scale, dtype=torch.int32)
    if fq.per_channel:
        return torch.fake_quantize_per_channel_affine(
            column, scale, zero_point, 0, fq.quant_min, fq.quant_max
        )
    return torch.fake_quantize_per_tensor_affine(
        column, scale.reshape(()), zero_point.reshape(()), fq.quant_min, fq.quant_max
    )


@torch.no_grad()
def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    fq: FakeQuantize,
    block_size: int = 128,
    dampening_frac: float = 0.01,
) -> torch.Tensor:
    """GPTQ on one (out, in) weight with the grid of `fq` (observed on the weight); float32 result."""
    w = weight.detach().float().clone()
    zeros = w == 0
    h = hessian.detach().float().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    u = inverse_cholesky(h, dampening_frac)
    columns = w.shape[1]
    for start in range(0, columns, block_size):
        end = min(start + block_size, columns)
        block = w[:, start:end].clone()
        u_block = u[start:end, start:end]
        errors = torch.zeros_like(block)
        for i in range(end - start):
            column = block[:, i]
            rounded = _round_column(column.unsqueeze(1), fq, start + i).squeeze(1)
            rounded = torch.where(zeros[:, start + i], torch.zeros_like(rounded), rounded)
            error = (column - rounded) / u_block[i, i]
            block[:, i:] -= error.unsqueeze(1) * u_block[i, i:].unsqueeze(0)
            block[:, i] = rounded
            errors[:, i] = error
        w[:, start:end] = block
        w[:, end:] -= errors @ u[start:end, end:]
    return w


@register
class GPTQModifier(LayerwiseModifier):
    """GPTQ weight-only quantization of every target Linear, layer by layer (module docstring).

    `scheme`: "W8A16", "W4A16" (groups of 128), or
    `{weights: {num_bits, symmetric: true, strategy: channel|tensor|group, group_size}}`.
    """

    scheme: Any = "W8A16"
    block_size: int = 128
    dampening_frac: float = 0.01

    @field_validator("scheme", mode="before")
    @classmethod
    def _load_scheme(cls, value: Any) -> Any:
        if isinstance(value, dict) and "input_activations" not in value:
            value = {**value, "input_activations": None}  # weight-only: {weights: {...}} suffices
        scheme = QuantizationScheme.load(value)
        if (
            scheme.weights is None
            or scheme.input_activations is not None
            or scheme.output_activations is not None
        ):
            raise ValueError(
                "GPTQModifier quantizes weights only: use W8A16, W4A16 or {weights: {...}} without activations"
            )
        if not scheme.weights.symmetric:
            raise ValueError(
                "GPTQModifier needs symmetric weights (zero point 0): set symmetric: true"
            )
        return value

    @model_validator(mode="after")
    def _check_gptq(self) -> GPTQModifier:
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if not 0.0 < self.dampening_frac < 1.0:
            raise ValueError(f"dampening_frac must be within (0, 1), got {self.dampening_frac}")
        return self

    @property
    def weight_args(self) -> QuantizationArgs:
        weights = QuantizationScheme.load(self.scheme).weights
        assert weights is not None  # checked by the validator
        return weights

    def _weight_only(self) -> QuantizationScheme:
        return QuantizationScheme(input_activations=None, weights=self.weight_args)

    def check_module(self, name: str, module: nn.Module) -> None:
        if type(module) is not nn.Linear and not is_quantized(module):
            raise ModelMatchError(
                f"{self.name}: {name} is a {type(module).__name__}; GPTQ quantizes nn.Linear only"
            )
        self.weight_args.check_weight(self.name, name, tuple(module.weight.shape))

    @torch.no_grad()
    def compress(self, name: str, module: nn.Module, hessian: InputHessian) -> dict[str, Any]:
        original = module.weight.detach().float().clone()
        fq = self.weight_args.fake_quantize(
            channels=original.shape[0], columns=original.shape[1]
        ).to(original.device)
        fq.observe(original)  # the grid: range of the weight per channel, group or tensor
        quantized = gptq_quantize(
            original, hessian.matrix, fq, self.block_size, self.dampening_frac
        )
        module.weight.data.copy_(quantized.to(module.weight.dtype))
        quantize_module_(module, self._weight_only())
        module.weight_fake_quant.load_state_dict(fq.state_dict())
        module.weight_fake_quant.observer_enabled = False
        return {
            "bits": self.weight_args.num_bits,
            "relative_error": relative_error(original, quantized, hessian.matrix),
            "tokens": hessian.tokens,
        }

    def apply_structure(self, model: nn.Module) -> None:
        """The weight-only fake quantizers GPTQ left, observers frozen (for reload and export)."""
        for module in self.select_targets(model).values():
            if not is_quantized(module):
                quantize_module_(module, self._weight_only())
                module.weight_fake_quant.observer_enabled = False
