"""Wanda (Sun et al., arXiv 2306.11695): prune by |weight| x input norm, per output row.

The score of W_ij is |W_ij| * ||X_j||_2, the norm of input channel j over every calibration
token (the square root of H's diagonal). Each output row loses exactly its share of the lowest
scores (`sparsity` of its weights), or, with N:M, the M - N lowest of every group of M inputs.
No weight is updated: Wanda is SparseGPT's mask without the reconstruction, at a fraction of the
cost.
"""

from __future__ import annotations

import torch

from sparseforge.modifiers.base import register
from sparseforge.modifiers.pruning.calibrated import InputHessian, LayerwisePruningModifier
from sparseforge.modifiers.pruning.masks import MaskStructure, create_masks


@torch.no_grad()
def wanda_prune(
    weight: torch.Tensor, input_norms: torch.Tensor, sparsity: float, structure: MaskStructure
) -> torch.Tensor:
    """The (out, in) weight with its lowest |W| * ||X_j|| pruned in each row."""
    w = weight.detach().float().clone()
    scores = w.abs() * input_norms.float().unsqueeze(0)
    if structure.kind == "nm":
        keep = create_masks({"w": scores}, {"w": structure.nm_sparsity}, structure)["w"]
    else:
        count = round(sparsity * w.shape[1])
        order = torch.sort(scores, dim=1, stable=True).indices[:, :count]
        keep = torch.ones_like(w, dtype=torch.bool).scatter_(1, order, False)
    return torch.where(keep, w, torch.zeros_like(w))


@register
class WandaPruningModifier(LayerwisePruningModifier):
    """Wanda one-shot pruning (see module docstring); fields as llm-compressor's."""

    def prune_matrix(self, weight: torch.Tensor, hessian: InputHessian) -> torch.Tensor:
        norms = torch.diag(hessian.matrix).clamp(min=0).sqrt()
        return wanda_prune(weight, norms, self.target_sparsity, self.structure)
