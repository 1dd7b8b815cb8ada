"""SparseGPT (Frantar & Alistarh, arXiv 2301.00774): one-shot pruning with weight reconstruction.

For a Linear weight W (rows = outputs) and its inputs' H = X X^T, SparseGPT prunes columns left
to right: with U the upper Cholesky factor of (H + damp I)^-1, removing weights of column i and
moving the error err = (w_i - q_i) / U_ii onto the columns right of it (W[:, i:] -= err U[i, i:])
is the optimal-brain-surgeon update restricted to the columns not yet processed. Columns are
handled in blocks of `block_size`; the mask of a block is chosen at its start from
w^2 / U_ii^2 (unstructured: exactly the target fraction, counted cumulatively, so the module ends
exactly at `sparsity`), or every M columns for N:M (the M - N lowest of each group of M).
"""

from __future__ import annotations

import torch
from pydantic import model_validator

from sparseforge.errors import SparseforgeError
from sparseforge.modifiers.base import register
from sparseforge.modifiers.pruning.calibrated import InputHessian, LayerwisePruningModifier
from sparseforge.modifiers.pruning.masks import MaskStructure, lowest_k


def inverse_cholesky(hessian: torch.Tensor, dampening_frac: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1 (shared with GPTQ)."""
    damp = dampening_frac * torch.mean(torch.diag(hessian))
    h = hessian + damp * torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    lower, info = torch.linalg.cholesky_ex(h)
    if int(info) != 0:
        raise SparseforgeError(
            f"SparseGPT: the input Hessian is not positive definite with dampening_frac={dampening_frac:g}; "
            "raise dampening_frac (e.g. 0.05 or 0.1)"
        )
    return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)


@torch.no_grad()
def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    structure: MaskStructure,
    block_size: int = 128,
    dampening_frac: float = 0.01,
) -> torch.Tensor:
    """SparseGPT on one (out, in) weight; returns the pruned and updated float32 weight."""
    w = weight.detach().float().clone()
    rows, columns = w.shape
    h = hessian.detach().float().clone()
    dead = torch.diag(h) == 0  # inputs that were always 0: their weights do nothing
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    u = inverse_cholesky(h, dampening_frac)
    nm = structure.kind == "nm"
    pruned_so_far = 0
    for start in range(0, columns, block_size):
        end = min(start + block_size, columns)
        block = w[:, start:end].clone()
        u_block = u[start:end, start:end]
        diag = torch.diag(u_block)
        errors = torch.zeros_like(block)
        if nm:
            prune = torch.zeros_like(block, dtype=torch.bool)
        else:
            count = round(sparsity * rows * end) - pruned_so_far
            prune = lowest_k((block**2 / diag**2).reshape(-1), count).reshape(block.shape)
            pruned_so_far += count
        for i in range(end - start):
            if nm and i % structure.m == 0:
                scores = block[:, i : i + structure.m] ** 2 / diag[i : i + structure.m] ** 2
                lowest = torch.topk(scores, structure.m - structure.n, dim=1, largest=False).indices
                prune.scatter_(1, i + lowest, True)
            column = block[:, i]
            kept = torch.where(prune[:, i], torch.zeros_like(column), column)
            error = (column - kept) / diag[i]
            block[:, i:] -= error.unsqueeze(1) * u_block[i, i:].unsqueeze(0)
            block[:, i] = kept
            errors[:, i] = error
        w[:, start:end] = block
        w[:, end:] -= errors @ u[start:end, end:]
    return w


@register
class SparseGPTModifier(LayerwisePruningModifier):
    """SparseGPT one-shot pruning of every target Linear, layer by layer (see module docstring).

    Fields as llm-compressor / SparseML 1.8: `sparsity`, `mask_structure` ("0:0" or "N:M" with N
    kept of every M), `block_size`, `dampening_frac`, `targets`, `ignore`, `sequential_update`.
    """

    block_size: int = 128
    dampening_frac: float = 0.01

    @model_validator(mode="after")
    def _check_sparsegpt(self) -> SparseGPTModifier:
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.structure.kind == "nm" and self.block_size % self.structure.m:
            raise ValueError(
                f"block_size ({self.block_size}) must be a multiple of M={self.structure.m} for mask_structure {self.mask_structure}"
            )
        if not 0.0 < self.dampening_frac < 1.0:
            raise ValueError(f"dampening_frac must be within (0, 1), got {self.dampening_frac}")
        return self

    def prune_matrix(self, weight: torch.Tensor, hessian: InputHessian) -> torch.Tensor:
        return sparsegpt_prune(
            weight,
            hessian.matrix,
            self.target_sparsity,
            self.structure,
            self.block_size,
            self.dampening_frac,
        )
