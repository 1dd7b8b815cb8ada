"""Gradual magnitude pruning (GMP): the lowest |w| are pruned on SparseML's schedule.

`GMPruningModifier` and `MagnitudePruningModifier` rank each parameter apart (GMP can still be
told `global_sparsity: True`, which SparseML deprecated in favour of
`GlobalMagnitudePruningModifier`, which ranks all selected parameters against one threshold).
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from pydantic import model_validator

from sparseforge.modifiers.base import TrainingState, register
from sparseforge.modifiers.pruning.base import GradualPruningModifier

logger = logging.getLogger(__name__)


class _MagnitudeScored(GradualPruningModifier):
    """Scores are |w|: already-zero weights rank lowest."""

    def score(self, state: TrainingState) -> dict[str, torch.Tensor]:
        return {name: self._param(state, name).detach().abs() for name in self._param_names}


@register
class GMPruningModifier(_MagnitudeScored):
    """Gradual magnitude pruning from `init_sparsity` at `start_epoch` to `final_sparsity` at
    `end_epoch`, updating masks every `update_frequency` epochs along `inter_func`."""

    global_sparsity: bool = False
    # Removed from SparseML long ago; accepted at their defaults so old recipes still load.
    phased: bool = False
    score_type: Literal["magnitude"] = "magnitude"

    @model_validator(mode="after")
    def _check_deprecated(self) -> GMPruningModifier:
        if self.phased:
            raise ValueError("phased=True (AC/DC pruning) is not supported by GMPruningModifier")
        if self.global_sparsity and type(self) is GMPruningModifier:
            logger.warning(
                "GMPruningModifier global_sparsity is deprecated in SparseML; use GlobalMagnitudePruningModifier"
            )
        return self


@register
class MagnitudePruningModifier(_MagnitudeScored):
    """GMP ranking each parameter apart (SparseML's alias of GMPruningModifier)."""


@register
class GlobalMagnitudePruningModifier(_MagnitudeScored):
    """GMP with one |w| threshold across all selected parameters: layers end at unequal
    sparsities whose total is the target."""

    global_by_default = True
