"""SmoothQuant (Xiao et al., arXiv 2211.10438): move activation outliers into the weights before PTQ.

For a mapping (a smooth layer -> the balance Linears that read its output), per channel j

    s_j = max|X_j| ^ a / max_i |W_ij| ^ (1 - a)        a = smoothing_strength

(max|X_j| over every calibration token, max|W_ij| over the balance layers' column j). The smooth
layer's output channel j is divided by s_j (a LayerNorm's weight and bias, or a Linear's row and
bias) and the balance layers' input column j multiplied by s_j: X W^T = (X / s)(W s)^T, so the
float model computes the same function while the activations that a later QuantizationModifier
quantizes per tensor lose their outlier channels. Fields as llm-compressor's: `smoothing_strength`,
`mappings` ([[balance patterns...], smooth pattern] pairs), `ignore` (balance layers left alone).

Default mappings are found from the model, not from names: one pass hooks every LayerNorm's output
and every Linear's input, and each LayerNorm whose output tensor is itself the input of Linears
(Q/K/V, a decoder's gate/up, an encoder's intermediate dense) maps to them. Smoothing is exact
only when the smooth layer's output reaches nothing but the balance layers; in a post-LN encoder
(BERT) the LayerNorm output is also the residual stream, which the scales would change. So every
mapping is checked on the first calibration batch: one that moves the float model's outputs by
more than `CHECK_TOLERANCE` (relative) is undone, logged and listed in the report as skipped.
A Linear smooth layer (`[["re:.*attention.output.dense$"], "re:.*attention.self.value$"]`) is
exact in attention: the value projection reaches the output projection through a weighted sum.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from pydantic import field_validator
from torch import nn

from sparseforge.errors import ModelMatchError, RecipeError
from sparseforge.modifiers.base import Modifier, TrainingState, register
from sparseforge.modifiers.pruning.calibrated import block_names, inside
from sparseforge.modifiers.selection import name_matches

logger = logging.getLogger(__name__)

CHECK_TOLERANCE = 1e-3  # relative change of the float outputs a smoothing may cause
_MIN_SCALE = 1e-5


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith(
        ("LayerNorm", "RMSNorm")
    )


@register
class SmoothQuantModifier(Modifier):
    """Per-channel smoothing of the activations ahead of post-training quantization (module docstring)."""

    one_shot: ClassVar[bool] = True

    smoothing_strength: float = 0.5
    mappings: list[tuple[list[str], str]] | None = None
    ignore: list[str] = []
    num_calibration_steps: int | None = None

    @field_validator("smoothing_strength")
    @classmethod
    def _strength(cls, value: float) -> float:
        if not 0.0 < value < 1.0:
            raise ValueError(f"smoothing_strength must be within (0, 1), got {value}")
        return value

    @field_validator("num_calibration_steps")
    @classmethod
    def _steps(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"num_calibration_steps must be >= 1, got {value}")
        return value

    def on_initialize(self, state: TrainingState) -> None:
        raise RecipeError(
            "runs without training only: use it with `sparseforge oneshot` (sparseforge.oneshot), "
            "before the QuantizationModifier",
            modifier=self.name,
        )

    def schedule_events(self) -> list[tuple[float, str]]:
        return [(0.0, f"{self.name} (one-shot, by sparseforge oneshot before any training)")]

    # ----- mappings -----------------------------------------------------------------------------
    def check_model(self, model: nn.Module) -> None:
        """Before any work: every pattern of `mappings` / `ignore` names a module of the model."""
        names = [name for name, _ in model.named_modules() if name]
        patterns = [p for balance, smooth in self.mappings or [] for p in [*balance, smooth]]
        for pattern in patterns + list(self.ignore):
            if not any(name_matches(name, pattern) for name in names):
                raise ModelMatchError(
                    f"{self.name}: '{pattern}' (mappings/ignore) matches no module of the model; "
                    f"module names include: {', '.join(names[:8])}, ..."
                )

    def resolve(
        self, model: nn.Module, batch: Mapping[str, torch.Tensor]
    ) -> list[tuple[str, list[str]]]:
        """[(smooth layer, [balance Linears])]: the recipe's mappings, or those found by data flow."""
        modules = dict(model.named_modules())
        if self.mappings:
            found = self._named_mappings(model, modules)
        else:
            found = _data_flow_mappings(model, batch)
        resolved = []
        for smooth, balance in found:
            kept = [b for b in balance if not any(name_matches(b, p) for p in self.ignore)]
            if kept and not any(name_matches(smooth, p) for p in self.ignore):
                _check_shapes(self.name, smooth, kept, modules)
                resolved.append((smooth, kept))
        if not resolved:
            raise ModelMatchError(
                f"{self.name}: no smooth layer -> Linear mapping found in the model"
                + (
                    ""
                    if self.mappings
                    else " (no LayerNorm feeds a Linear directly); set mappings:"
                )
            )
        return resolved

    def _named_mappings(
        self, model: nn.Module, modules: dict[str, nn.Module]
    ) -> list[tuple[str, list[str]]]:
        """Each smooth match with the balance matches inside the same repeated block."""
        prefixes = [p for p in block_names(model) if p]
        out = []
        for balance_patterns, smooth_pattern in self.mappings or []:
            for smooth in (n for n in modules if n and name_matches(n, smooth_pattern)):
                prefix = next((p for p in prefixes if inside(smooth, p)), "")
                balance = [
                    n
                    for n, m in modules.items()
                    if isinstance(m, nn.Linear)
                    and inside(n, prefix)
                    and any(name_matches(n, p) for p in balance_patterns)
                ]
                out.append((smooth, balance))
        return out

    # ----- the run -----------------------------------------------------------------------------
    @torch.no_grad()
    def smooth(
        self, model: nn.Module, batches: Sequence[Mapping[str, torch.Tensor]]
    ) -> dict[str, Any]:
        """Calibrate the channel ranges, scale each mapping, undo those that change the model."""
        mappings = self.resolve(model, batches[0])
        used = batches[: self.num_calibration_steps] if self.num_calibration_steps else batches
        ranges = _channel_ranges(model, [s for s, _ in mappings], used)
        reference = _outputs(model, batches[0])
        applied, skipped = [], {}
        for smooth, balance in mappings:
            saved = _save(model, [smooth, *balance])
            self._apply(model, smooth, balance, ranges[smooth])
            change = _relative_change(_outputs(model, batches[0]), reference)
            if change > CHECK_TOLERANCE:
                _restore(model, saved)
                skipped[smooth] = f"changes the float outputs by {change:.2e} (relative): not exact"
                logger.warning(
                    "%s: %s -> %s %s; skipped", self.name, smooth, balance, skipped[smooth]
                )
            else:
                applied.append({"smooth": smooth, "balance": balance})
        logger.info("%s: smoothed %d mapping(s), skipped %d", self.name, len(applied), len(skipped))
        return {"applied": applied, "skipped": skipped}

    def _apply(
        self, model: nn.Module, smooth: str, balance: list[str], act_max: torch.Tensor
    ) -> None:
        layers = [model.get_submodule(name) for name in balance]
        weight_max = torch.stack([m.weight.detach().abs().amax(dim=0) for m in layers]).amax(dim=0)
        weight_max = weight_max.float().clamp(min=_MIN_SCALE)
        alpha = self.smoothing_strength
        scales = act_max.pow(alpha) / weight_max.pow(1 - alpha)
        scales = torch.where(weight_max > 0, scales, act_max).clamp(min=_MIN_SCALE)
        source = model.get_submodule(smooth)
        if isinstance(source, nn.Linear):
            source.weight.div_(scales.view(-1, 1).to(source.weight.dtype))
        else:
            source.weight.div_(scales.to(source.weight.dtype))
        if getattr(source, "bias", None) is not None:
            source.bias.div_(scales.to(source.bias.dtype))
        for layer in layers:
            layer.weight.mul_(scales.view(1, -1).to(layer.weight.dtype))

    def apply_structure(self, model: nn.Module) -> None:
        """Nothing to rebuild: the smoothed weights are saved as they are."""


def _check_shapes(
    owner: str, smooth: str, balance: list[str], modules: dict[str, nn.Module]
) -> None:
    source = modules[smooth]
    channels = source.weight.shape[0]
    if not (isinstance(source, nn.Linear) or _is_norm(source)):
        raise ModelMatchError(
            f"{owner}: smooth layer {smooth} is a {type(source).__name__}; use a LayerNorm or Linear"
        )
    for name in balance:
        if modules[name].weight.shape[1] != channels:
            raise ModelMatchError(
                f"{owner}: {name} reads {modules[name].weight.shape[1]} channels but {smooth} gives {channels}"
            )


def _data_flow_mappings(
    model: nn.Module, batch: Mapping[str, torch.Tensor]
) -> list[tuple[str, list[str]]]:
    """Each norm layer whose output tensor is itself the input of Linears, with those Linears.

    `produced` holds the output tensors themselves: an `id()` alone is reused once a tensor is
    freed, which matched a later layer's Linear to an earlier norm."""
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    readers: dict[str, list[str]] = {}
    handles = []

    def on_norm(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                produced[id(output)] = (name, output)
                readers.setdefault(name, [])

        return hook

    def on_linear(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            entry = produced.get(id(args[0])) if args else None
            source = entry[0] if entry is not None and entry[1] is args[0] else None
            if source is not None and name not in readers[source]:
                readers[source].append(name)

        return hook

    for name, module in model.named_modules():
        if _is_norm(module):
            handles.append(module.register_forward_hook(on_norm(name)))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_pre_hook(on_linear(name)))
    try:
        model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return [(smooth, balance) for smooth, balance in readers.items() if balance]


def _channel_ranges(
    model: nn.Module, smooth_layers: list[str], batches: Sequence[Mapping[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """max |output channel| of each smooth layer over every calibration token."""
    ranges: dict[str, torch.Tensor] = {}

    def hook_for(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: Any, output: torch.Tensor) -> None:
            current = output.detach().abs().float().reshape(-1, output.shape[-1]).amax(dim=0)
            ranges[name] = torch.maximum(ranges[name], current) if name in ranges else current

        return hook

    handles = [model.get_submodule(n).register_forward_hook(hook_for(n)) for n in smooth_layers]
    try:
        for batch in batches:
            model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return ranges


def _outputs(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    out = model(**batch)
    if isinstance(out, Mapping):
        out = next(v for v in out.values() if isinstance(v, torch.Tensor))
    elif isinstance(out, (tuple, list)):
        out = out[0]
    return out.detach().float()


def _relative_change(new: torch.Tensor, reference: torch.Tensor) -> float:
    return float((new - reference).abs().max() / reference.abs().max().clamp(min=1e-12))


def _save(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    params = {}
    for name in names:
        for key, value in model.get_submodule(name).named_parameters(recurse=False):
            params[f"{name}.{key}"] = value.detach().clone()
    return params


def _restore(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    for key, value in saved.items():
        model.get_parameter(key).copy_(value)
