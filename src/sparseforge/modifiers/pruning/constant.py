"""`ConstantPruningModifier`: keep a pre-sparsified model's zeros while it trains (sparse transfer).

At `start_epoch` the mask of each selected parameter becomes its current non-zeros and is held
until `end_epoch` (or the end of training). Nothing is left in the model: the zeros live in the
weights, so `apply_structure` has nothing to rebuild.
"""

from __future__ import annotations

import math

import torch
from pydantic import model_validator

from sparseforge.modifiers.base import ScheduleRuntime, TrainingState, register
from sparseforge.modifiers.pruning.base import PruningModifier
from sparseforge.modifiers.selection import as_pattern_list


@register
class ConstantPruningModifier(PruningModifier):
    """Holds the zeros of `params` (e.g. `__ALL_PRUNABLE__`) fixed from start to end."""

    positional_fields = ("params", "start_epoch", "end_epoch")  # SparseML's order

    @model_validator(mode="after")
    def _needs_params(self) -> ConstantPruningModifier:
        if not as_pattern_list(self.params):
            raise ValueError(
                "params is required: parameter names, 're:' patterns, __ALL__ or __ALL_PRUNABLE__"
            )
        return self

    @property
    def leaves_masks_enabled(self) -> bool:
        return False  # SparseML: masks are released at end_epoch

    def _update_frequency_epochs(self, rt: ScheduleRuntime) -> float:
        return (
            math.inf
        )  # the mask is taken once, at start; update_frequency is ignored as in SparseML

    @torch.no_grad()
    def on_start(self, state: TrainingState) -> None:
        self.refresh_params(state)
        masks = {name: self._param(state, name).detach() != 0 for name in self._param_names}
        self._targets = {name: 1.0 - float(mask.float().mean()) for name, mask in masks.items()}
        self.set_masks(state, masks)
        self._log(state)

    def schedule_events(self) -> list[tuple[float, str]]:
        what = self.params if isinstance(self.params, str) else f"{len(self.params)} pattern(s)"
        events = [(max(self.scheduled_start, 0.0), f"{self.name} holds the zeros of {what}")]
        if self.scheduled_end >= 0:
            events.append((self.scheduled_end, f"{self.name} releases its masks"))
        return events
