"""Min/max moving-average observers and fake quantization, on torch's core fake-quant ops.

`FakeQuantize` is the one module QAT inserts: it observes a tensor's range (SparseML's
`MovingAverageMinMaxObserver` formula, averaging constant 0.01, first observation taken as is),
turns the range into a scale and zero point exactly as torch's observers do, and rounds the
tensor through the integer grid with `torch.fake_quantize_per_tensor_affine` /
`torch.fake_quantize_per_channel_affine` (straight-through gradients). `torch.ao.quantization`
is not used: it is deprecated for removal.

Scale, zero point and the observed range are persistent buffers, so they are saved in
safetensors with the model; whether the observer runs is a plain attribute set by the
QuantizationModifier (its own checkpoint state), so a reloaded model is always frozen.

While `torch.export` traces the model (ONNX export), the fake quantization is emitted as the
custom op `sparseforge::fake_quantize`, which `sparseforge.export` translates to ONNX
QuantizeLinear/DequantizeLinear; the observer never runs while exporting.
"""

from __future__ import annotations

import torch
from torch import nn

AVERAGING_CONSTANT = 0.01
_EPS = torch.finfo(torch.float32).eps


@torch.library.custom_op("sparseforge::fake_quantize", mutates_args=())
def fake_quantize_op(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    axis: int,
    quant_min: int,
    quant_max: int,
) -> torch.Tensor:
    """Fake quantization as one opaque op (axis -1 = per tensor), for export tracing only."""
    return _fake_quantize(x, scale, zero_point, axis, quant_min, quant_max)


@fake_quantize_op.register_fake
def _fake_quantize_meta(x, scale, zero_point, axis, quant_min, quant_max):  # noqa: ANN001, ANN202
    return torch.empty_like(x)


def _fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    axis: int,
    quant_min: int,
    quant_max: int,
) -> torch.Tensor:
    if axis < 0:
        return torch.fake_quantize_per_tensor_affine(
            x, scale.reshape(()), zero_point.reshape(()).to(torch.int32), quant_min, quant_max
        )
    if scale.ndim == 2:  # groups: (rows, groups) scales, one per `columns / groups` inputs of a row
        rows, groups = scale.shape
        flat = x.reshape(rows * groups, -1)
        out = torch.fake_quantize_per_channel_affine(
            flat, scale.reshape(-1), zero_point.reshape(-1).to(torch.int32), 0, quant_min, quant_max
        )
        return out.reshape(x.shape)
    return torch.fake_quantize_per_channel_affine(
        x, scale, zero_point.to(torch.int32), axis, quant_min, quant_max
    )


def quant_range(num_bits: int, signed: bool, reduce_range: bool = False) -> tuple[int, int]:
    """Integer range of a `num_bits` grid: signed [-2^(b-1), 2^(b-1)-1] or unsigned [0, 2^b-1]."""
    bits = num_bits - 1 if reduce_range else num_bits
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


class FakeQuantize(nn.Module):
    """Observer + fake quantizer of one tensor (an activation or a weight).

    Symmetric grids are signed (int8, zero point 0: an exact zero stays zero, so pruned weights
    stay pruned); asymmetric grids are unsigned (uint8) with a zero point, as SparseML's
    defaults and onnxruntime's U8S8 integer kernels expect.
    """

    def __init__(
        self,
        num_bits: int = 8,
        symmetric: bool = False,
        channels: int | None = None,
        ch_axis: int = 0,
        reduce_range: bool = False,
        averaging_constant: float = AVERAGING_CONSTANT,
        group_size: int | None = None,
        columns: int | None = None,
    ):
        super().__init__()
        if not 2 <= num_bits <= 8:
            raise ValueError(f"num_bits must be within 2..8 for ONNX int8 export, got {num_bits}")
        if group_size is not None:
            check_groups(group_size, channels, columns, ch_axis)
        self.group_size = group_size
        self.num_bits = num_bits
        self.symmetric = symmetric
        self.ch_axis = ch_axis if channels is not None else -1
        self.quant_min, self.quant_max = quant_range(
            num_bits, signed=symmetric, reduce_range=reduce_range
        )
        self.averaging_constant = averaging_constant
        self.observer_enabled = True
        self.fake_quant_enabled = True
        shape: tuple[int, ...] = (channels,) if channels is not None else ()
        if group_size is not None:  # one scale per row and group of `group_size` input columns
            shape = (channels, columns // group_size)
        self.register_buffer("scale", torch.ones(shape))
        self.register_buffer("zero_point", torch.zeros(shape, dtype=torch.int32))
        self.register_buffer("min_val", torch.full(shape, float("inf")))
        self.register_buffer("max_val", torch.full(shape, float("-inf")))

    @property
    def per_channel(self) -> bool:
        return self.ch_axis >= 0

    @property
    def grouped(self) -> bool:
        """Whether each row has one scale per group of `group_size` columns (strategy: group)."""
        return self.group_size is not None

    @property
    def observed(self) -> bool:
        """Whether any tensor has been observed yet (scale/zero point are meaningful)."""
        return bool(torch.isfinite(self.min_val).all())

    def extra_repr(self) -> str:
        kind = f"per-channel(axis={self.ch_axis})" if self.per_channel else "per-tensor"
        if self.grouped:
            kind = f"per-group(size={self.group_size})"
        return (
            f"bits={self.num_bits}, range=[{self.quant_min}, {self.quant_max}], {kind}, "
            f"observer={'on' if self.observer_enabled else 'frozen'}"
        )

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Update the moving-average min/max with `x` and recompute scale and zero point."""
        x = x.detach().float()
        if self.grouped:
            rows, groups = self.scale.shape
            if x.ndim != 2 or x.shape != (rows, groups * self.group_size):
                raise ValueError(
                    f"a per-group quantizer of {rows}x{groups * self.group_size} weights got {tuple(x.shape)}"
                )
            cur_min, cur_max = torch.aminmax(x.reshape(rows, groups, self.group_size), dim=2)
        elif self.per_channel:
            flat = x.transpose(0, self.ch_axis).reshape(x.shape[self.ch_axis], -1)
            cur_min, cur_max = torch.aminmax(flat, dim=1)
        else:
            cur_min, cur_max = torch.aminmax(x)
        if not self.observed:
            self.min_val.copy_(cur_min)
            self.max_val.copy_(cur_max)
        else:
            self.min_val.add_(self.averaging_constant * (cur_min - self.min_val))
            self.max_val.add_(self.averaging_constant * (cur_max - self.max_val))
        self._compute_qparams()

    @torch.no_grad()
    def _compute_qparams(self) -> None:
        # torch's observer formula (observer.py `_calculate_qparams`), so scales match SparseML's.
        min_neg = torch.clamp(self.min_val, max=0.0)
        max_pos = torch.clamp(self.max_val, min=0.0)
        qmin, qmax = self.quant_min, self.quant_max
        if self.symmetric:
            max_pos = torch.maximum(-min_neg, max_pos)
            scale = torch.clamp(max_pos / ((qmax - qmin) / 2), min=_EPS)
            zero_point = torch.zeros_like(self.zero_point)
        else:
            scale = torch.clamp((max_pos - min_neg) / float(qmax - qmin), min=_EPS)
            zero_point = torch.clamp(qmin - torch.round(min_neg / scale), qmin, qmax).to(
                torch.int32
            )
        self.scale.copy_(scale)
        self.zero_point.copy_(zero_point)

    def fake_quantize_rows(self, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Fake-quantize `rows = table[index]` with the qparams of the whole `table`.

        Equal to `self(table)[index]` (the rounding is elementwise, and a per-channel row keeps its
        row's scale), without rounding and masking every row of a 30k-word table each step.
        The caller observes the table first (`observe`), as `forward` would.
        """
        if not self.fake_quant_enabled:
            return rows
        if not self.per_channel:
            return _fake_quantize(
                rows, self.scale, self.zero_point, -1, self.quant_min, self.quant_max
            )
        if self.ch_axis != 0:
            raise ValueError(f"row-wise fake quantization needs channel axis 0, got {self.ch_axis}")
        flat_index = index.reshape(-1)
        flat = rows.reshape(flat_index.numel(), -1)
        out = _fake_quantize(
            flat,
            self.scale[flat_index],
            self.zero_point[flat_index],
            0,
            self.quant_min,
            self.quant_max,
        )
        return out.reshape(rows.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting():
            if not self.fake_quant_enabled:
                return x
            return fake_quantize_op(
                x, self.scale, self.zero_point, self.ch_axis, self.quant_min, self.quant_max
            )
        if self.observer_enabled:
            self.observe(x)
        if not self.fake_quant_enabled:
            return x
        return _fake_quantize(
            x, self.scale, self.zero_point, self.ch_axis, self.quant_min, self.quant_max
        )


def check_groups(group_size: int, channels: int | None, columns: int | None, ch_axis: int) -> None:
    """ValueError unless `columns` (a 2-D weight's input width, rows on axis 0) splits into groups."""
    if channels is None or columns is None or ch_axis != 0:
        raise ValueError("group_size needs a 2-D weight: its rows (axis 0) and its input columns")
    if group_size < 1 or columns % group_size:
        raise ValueError(
            f"group_size {group_size} does not divide the weight's {columns} input columns; "
            f"use a divisor of {columns} (e.g. {_divisor_hint(columns, group_size)}) or strategy: channel"
        )


def _divisor_hint(columns: int, group_size: int) -> int:
    """The divisor of `columns` nearest to `group_size` (for error messages)."""
    divisors = [d for d in range(1, columns + 1) if columns % d == 0]
    return min(divisors, key=lambda d: (abs(d - group_size), -d))


def fake_quantizers(model: nn.Module) -> dict[str, FakeQuantize]:
    """Every FakeQuantize of `model` by name."""
    return {
        name: module for name, module in model.named_modules() if isinstance(module, FakeQuantize)
    }


def set_observers(model: nn.Module, enabled: bool) -> None:
    """Turn every observer of `model` on or off (off = frozen scales and zero points)."""
    for module in fake_quantizers(model).values():
        module.observer_enabled = enabled
