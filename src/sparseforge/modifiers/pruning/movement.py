"""Movement pruning (Sanh et al., arXiv 2005.07683): keep the weights moving away from zero.

Scores accumulate `-0.01 * w * grad` (SparseML's scaling) before every optimizer step from the
start of training, so the first mask at `start_epoch` already has a history; the mask is then
built by the shared mask creator on SparseML's gradual schedule.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import PrivateAttr

from sparseforge.modifiers.base import TrainingState, register
from sparseforge.modifiers.pruning.base import GradualPruningModifier

SCORE_SCALE = 0.01


@register
class MovementPruningModifier(GradualPruningModifier):
    """Gradual pruning by movement scores (see module docstring)."""

    log_frequency: float | None = -1.0

    _scores: dict[str, torch.Tensor] = PrivateAttr(default_factory=dict)
    _scored_step: int | None = PrivateAttr(default=None)

    @torch.no_grad()
    def _accumulate(self, state: TrainingState) -> None:
        """Add this step's `-w * grad` once per optimizer step (before its grads are masked)."""
        if self._scored_step == state.step:
            return
        self._scored_step = state.step
        for name in self._param_names:
            param = self._param(state, name)
            if param.grad is None or torch.isnan(param.grad).any():
                continue  # no gradient, or an AMP overflow step that the scaler will skip
            score = self._scores.get(name)
            if score is None or score.device != param.device:
                score = self._scores[name] = torch.zeros_like(param, dtype=torch.float32)
            score.add_(param.grad.float() * param.detach().float(), alpha=-SCORE_SCALE)

    def optimizer_pre_step(self, state: TrainingState) -> None:
        if self._param_names and not self.ended:
            self._accumulate(state)
        super().optimizer_pre_step(state)

    def score(self, state: TrainingState) -> dict[str, torch.Tensor]:
        self._accumulate(state)  # include the current step, as SparseML scores before masking
        return {
            name: self._scores.get(name, torch.zeros(self._param(state, name).shape)).clone()
            for name in self._param_names
        }

    def extra_state(self) -> dict[str, Any]:
        extra = super().extra_state()
        extra["scores"] = {
            name: score.detach().cpu().clone() for name, score in self._scores.items()
        }
        extra["scored_step"] = self._scored_step
        return extra

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        self._scores = {}
        for name, score in state.get("scores", {}).items():
            device = self._param(self._state, name).device if self._state else score.device
            self._scores[name] = score.to(device)
        self._scored_step = state.get("scored_step")
