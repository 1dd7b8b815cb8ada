"""SparseML's parameter-value modifiers and its sparsification logger.

- `SetParamModifier`: at `start_epoch`, every parameter `params` selects is set to `val`.
- `GradualParamModifier`: from `init_val` at `start_epoch` to `final_val` at `end_epoch`, by
  `inter_func` (linear, cubic, inverse_cubic), updated every `update_frequency` epochs.
- `SparsificationLoggingModifier`: every `update_frequency` epochs between start and end, the
  sparsity of each prunable weight and of them all, and how many modules QAT quantized, go to the
  run's logs (the Trainer's logger, `manager.state.logs`).

`params` takes exact names, `re:` patterns and `__ALL__` / `__ALL_PRUNABLE__`; with
`params_strict: false` a pattern that matches nothing is skipped (SparseML's meaning).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import PrivateAttr, model_validator

from sparseforge.errors import ModelMatchError
from sparseforge.modifiers.base import Modifier, TrainingState, UpdatingModifier, register
from sparseforge.modifiers.pruning.schedule import interpolate
from sparseforge.modifiers.selection import (
    as_pattern_list,
    prunable_parameter_names,
    select_parameters,
)


def _select(
    modifier: Modifier, model: torch.nn.Module, params: str | list[str], strict: bool
) -> dict[str, torch.nn.Parameter]:
    """The parameters `params` names; with `strict` False, patterns matching nothing are skipped."""
    if strict:
        return select_parameters(model, params, owner=modifier.name)
    selected: dict[str, torch.nn.Parameter] = {}
    for pattern in as_pattern_list(params):
        try:
            selected.update(select_parameters(model, pattern, owner=modifier.name))
        except ModelMatchError:
            continue
    return selected


def _check_shape(modifier: Modifier, name: str, param: torch.Tensor, value: torch.Tensor) -> None:
    if value.dim() and value.shape != param.shape:
        raise ModelMatchError(
            f"{modifier.name}: value of shape {tuple(value.shape)} does not fit parameter {name} "
            f"of shape {tuple(param.shape)}; give a number or a nested list of that shape"
        )


@torch.no_grad()
def _assign(params: dict[str, torch.nn.Parameter], value: torch.Tensor) -> None:
    for param in params.values():
        param.data.copy_(value.to(device=param.device, dtype=param.dtype).expand_as(param))


@register
class SetParamModifier(Modifier):
    """Sets `params` to `val` at `start_epoch` (a number, or a nested list of the parameter's shape)."""

    params: str | list[str]
    val: Any
    params_strict: bool = True
    start_epoch: float = 0.0

    _selected: dict[str, torch.nn.Parameter] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> SetParamModifier:
        if self.end_epoch != -1 or self.end_step is not None:
            raise ValueError("end_epoch is not used by SetParamModifier: leave it out (or -1)")
        torch.tensor(self.val, dtype=torch.float64)  # a number or a rectangular nested list
        return self

    def on_initialize(self, state: TrainingState) -> None:
        self._selected = _select(self, state.model, self.params, self.params_strict)
        value = torch.tensor(self.val)
        for name, param in self._selected.items():
            _check_shape(self, name, param, value)

    def on_start(self, state: TrainingState) -> None:
        _assign(self._selected, torch.tensor(self.val))


@register
class GradualParamModifier(UpdatingModifier):
    """Moves `params` from `init_val` to `final_val` between start and end, by `inter_func`."""

    params: str | list[str]
    init_val: Any
    final_val: Any
    inter_func: Literal["linear", "cubic", "inverse_cubic"] = "linear"
    params_strict: bool = True

    _selected: dict[str, torch.nn.Parameter] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> GradualParamModifier:
        if self.end_epoch == -1 and self.end_step is None:
            raise ValueError("end_epoch (or end_step) is required: the values need an end")
        init = torch.tensor(self.init_val, dtype=torch.float64)
        final = torch.tensor(self.final_val, dtype=torch.float64)
        if init.shape != final.shape:
            raise ValueError(
                f"init_val shape {tuple(init.shape)} must match final_val shape {tuple(final.shape)}"
            )
        return self

    def on_initialize(self, state: TrainingState) -> None:
        self._selected = _select(self, state.model, self.params, self.params_strict)
        value = torch.tensor(self.init_val)
        for name, param in self._selected.items():
            _check_shape(self, name, param, value)

    def value_at(self, epoch: float) -> torch.Tensor:
        """The parameters' value at `epoch` (run time)."""
        init = torch.tensor(self.init_val, dtype=torch.float64)
        final = torch.tensor(self.final_val, dtype=torch.float64)
        start = max(self.scheduled_start, 0.0)
        # the fraction of the way: SparseML's curve from 0 to 1 (the pruning schedules' own)
        fraction = interpolate(epoch, start, self.scheduled_end, 0.0, 1.0, self.inter_func)
        return init + fraction * (final - init)

    def on_update(self, state: TrainingState) -> None:
        _assign(self._selected, self.value_at(state.epoch))


@register
class SparsificationLoggingModifier(UpdatingModifier):
    """Logs each prunable weight's sparsity, the total, and the quantized module count."""

    start_epoch: float = -1.0
    update_frequency: float = 1.0

    _names: list[str] = PrivateAttr(default_factory=list)

    def on_initialize(self, state: TrainingState) -> None:
        self._names = prunable_parameter_names(state.model)

    def on_update(self, state: TrainingState) -> None:
        params = dict(state.model.named_parameters())
        zeros = total = 0
        for name in self._names:
            param = params.get(name)
            if param is None:  # removed by layer pruning since initialize
                continue
            count = int((param.detach() == 0).sum())
            state.logs[f"sparsification/sparsity/{name}"] = count / max(param.numel(), 1)
            zeros, total = zeros + count, total + param.numel()
        state.logs["sparsification/sparsity/total"] = zeros / max(total, 1)
        state.logs["sparsification/quantized_modules"] = float(
            sum(1 for _, m in state.model.named_modules() if _is_quantized(m))
        )


def _is_quantized(module: torch.nn.Module) -> bool:
    return any(
        child in module._modules
        for child in ("weight_fake_quant", "input_fake_quant", "matmul_fake_quant")
    )


__all__ = [
    "GradualParamModifier",
    "SetParamModifier",
    "SparsificationLoggingModifier",
]
