"""Optimal BERT Surgeon (oBERT, arXiv 2203.07259): second-order pruning with weight updates.

At each scheduled update, `num_grads` gradients are drawn from the training data through
`state.grad_sampler` (the Trainer provides it; see `GradSampler` in modifiers/base.py). They give
the empirical Fisher F = damp * I + (1/m) sum g g^T, block-diagonal with blocks of
`fisher_block_size`, whose inverse is built directly by Woodbury (rank-one) updates. Then:

- unstructured: score_i = w_i^2 / (2 [F^-1]_ii); pruning the set Q moves the remaining weights by
  dw = -sum_{q in Q} F^-1[:, q] w_q / [F^-1]_qq (SparseML's per-weight sum);
- block4 ([1, 4] blocks Q of consecutive inputs): score_Q = w_Q^T ([F^-1]_QQ)^-1 w_Q / 2 and
  dw = -sum_Q F^-1[:, Q] ([F^-1]_QQ)^-1 w_Q.

`num_recomputations` splits one update into several smaller ones, each with fresh gradients.
Memory is O(d * fisher_block_size) floats for d pruned weights (SparseML's figure).
"""

from __future__ import annotations

import inspect
import logging
import math
from typing import Any, Literal

import torch
from pydantic import PrivateAttr, field_validator, model_validator

from sparseforge.errors import ModelMatchError, SparseforgeError
from sparseforge.modifiers.base import TrainingState, register
from sparseforge.modifiers.pruning.base import GradualPruningModifier
from sparseforge.modifiers.pruning.masks import create_masks
from sparseforge.modifiers.pruning.schedule import interpolate

logger = logging.getLogger(__name__)
EPS = torch.finfo(torch.float32).eps


class BlockFisherInverse:
    """Inverse of a block-diagonal empirical Fisher, updated one gradient at a time (Woodbury)."""

    def __init__(
        self,
        num_grads: int,
        block_size: int,
        num_weights: int,
        damp: float,
        device: torch.device | str = "cpu",
    ):
        self.m = num_grads
        self.block_size = block_size
        self.d = num_weights
        self.num_blocks = math.ceil(num_weights / block_size)
        eye = torch.eye(block_size, device=device) / damp
        self.f_inv = eye.unsqueeze(0).repeat(self.num_blocks, 1, 1)  # (blocks, B, B)

    def _blocks(self, v: torch.Tensor) -> torch.Tensor:
        v = v.reshape(-1).to(self.f_inv)
        pad = self.num_blocks * self.block_size - v.numel()
        if pad:
            v = torch.cat([v, v.new_zeros(pad)])
        return v.view(self.num_blocks, self.block_size)

    def add_grad(self, grad: torch.Tensor) -> None:
        """F <- F + g g^T / m, i.e. F^-1 <- F^-1 - (F^-1 g)(F^-1 g)^T / (m + g^T F^-1 g)."""
        g = self._blocks(grad)
        finv_g = torch.einsum("bij,bj->bi", self.f_inv, g)
        alpha = (self.m + torch.einsum("bi,bi->b", g, finv_g)).sqrt().unsqueeze(1)
        finv_g /= alpha
        self.f_inv.baddbmm_(finv_g.unsqueeze(2), finv_g.unsqueeze(1), alpha=-1)

    def diag(self) -> torch.Tensor:
        return self.f_inv.diagonal(dim1=1, dim2=2).reshape(-1)[: self.d]

    def mul(self, v: torch.Tensor) -> torch.Tensor:
        """F^-1 v for a vector of the parameter's size."""
        return torch.bmm(self.f_inv, self._blocks(v).unsqueeze(2)).reshape(-1)[: self.d]

    def sub_blocks(self, size: int) -> torch.Tensor:
        """The (d / size, size, size) diagonal sub-blocks of F^-1 (block_size % size == 0)."""
        n = self.block_size // size
        parts = [
            self.f_inv[:, i * size : (i + 1) * size, i * size : (i + 1) * size] for i in range(n)
        ]
        return torch.stack(parts, dim=1).reshape(-1, size, size)[: self.d // size]


def obs_scores(
    weight: torch.Tensor, finv: BlockFisherInverse, block: int = 1
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """OBS saliency of each weight (block = 1) or [1, block] group (expanded to each element),
    plus, for groups, ([F^-1]_QQ)^-1 w_Q cached for the weight update."""
    w = weight.detach().reshape(-1).to(finv.f_inv)
    if block == 1:
        return (w**2 / (2.0 * finv.diag() + EPS)).reshape(weight.shape), None
    w_q = w.view(-1, block)
    solved = torch.linalg.solve(finv.sub_blocks(block), w_q)  # (d/Q, Q)
    score = 0.5 * torch.einsum("bi,bi->b", w_q, solved)
    return score.unsqueeze(1).expand(-1, block).reshape(weight.shape), solved


def obs_update(
    weight: torch.Tensor,
    finv: BlockFisherInverse,
    newly_pruned: torch.Tensor,
    solved: torch.Tensor | None,
) -> torch.Tensor:
    """The OBS change of all weights when `newly_pruned` ones are removed (pruned end at 0)."""
    pruned = newly_pruned.reshape(-1).to(finv.f_inv)
    if solved is None:
        w = weight.detach().reshape(-1).to(finv.f_inv)
        delta = -finv.mul(w * pruned / (finv.diag() + EPS))
    else:
        delta = -finv.mul(solved.reshape(-1) * pruned)
    return delta.reshape(weight.shape)


@register
class OBSPruningModifier(GradualPruningModifier):
    """oBERT gradual pruning (see module docstring); needs `grad_sampler` from the Trainer."""

    global_sparsity: bool = True
    mask_type: Literal["unstructured", "block4"] | list[int] = "unstructured"
    num_grads: int = 1024
    damp: float = 1e-7
    fisher_block_size: int = 50
    grad_sampler_kwargs: dict[str, Any] | None = None
    num_recomputations: int = 1

    _last_applied: dict[str, float] = PrivateAttr(default_factory=dict)

    @field_validator("mask_type")
    @classmethod
    def _obs_mask_type(cls, value: Any) -> Any:
        if isinstance(value, list) and value != [1, 4]:
            raise ValueError(
                f"OBSPruningModifier supports 'unstructured' and 'block4' ([1, 4]), got {value}"
            )
        return value

    @model_validator(mode="after")
    def _check_obs(self) -> OBSPruningModifier:
        if self.num_grads < 1:
            raise ValueError(f"num_grads must be >= 1, got {self.num_grads}")
        if not self.damp > 0:
            raise ValueError(f"damp must be > 0, got {self.damp}")
        if self.fisher_block_size < 1:
            raise ValueError(f"fisher_block_size must be >= 1, got {self.fisher_block_size}")
        if self._block > 1 and self.fisher_block_size % self._block:
            raise ValueError(
                f"fisher_block_size ({self.fisher_block_size}) must be a multiple of 4 for block4 pruning"
            )
        if self.num_recomputations < 1:
            raise ValueError(f"num_recomputations must be >= 1, got {self.num_recomputations}")
        return self

    @property
    def _block(self) -> int:
        return 1 if self.structure.kind == "unstructured" else 4

    def needs_training_batches(self) -> bool:  # noqa: D102
        return True

    def on_initialize(self, state: TrainingState) -> None:
        super().on_initialize(state)
        if state.grad_sampler is None:
            raise SparseforgeError(
                f"{self.name} needs gradients from training data: pass grad_sampler= to "
                "Manager.modify() (the sparseforge Trainer does this), a callable "
                "(model, num_batches) -> iterator yielding after each backward pass"
            )

    def check_params(self, params: dict[str, torch.nn.Parameter]) -> None:
        super().check_params(params)
        if self._block > 1:
            for name, param in params.items():
                if param.dim() != 2 or param.shape[1] % 4:
                    raise ModelMatchError(
                        f"{self.name}: block4 OBS needs 2-D weights with a multiple of 4 inputs; {name} is {tuple(param.shape)}"
                    )

    # ----- gradients -----------------------------------------------------------------------------
    def _sampler_iter(self, state: TrainingState):
        kwargs = self.grad_sampler_kwargs or {}
        if kwargs:
            try:
                inspect.signature(state.grad_sampler).bind(state.model, self.num_grads, **kwargs)
            except TypeError:
                logger.warning(
                    "%s: the grad sampler takes no keyword arguments; grad_sampler_kwargs %s ignored",
                    self.name,
                    kwargs,
                )
                kwargs = {}
        return state.grad_sampler(state.model, self.num_grads, **kwargs)

    @torch.no_grad()
    def collect_fisher_inverses(self, state: TrainingState) -> dict[str, BlockFisherInverse]:
        """Draw `num_grads` gradients (model in eval mode, the step's own gradients kept aside)."""
        model = state.model
        params = {name: self._param(state, name) for name in self._param_names}
        finvs = {
            name: BlockFisherInverse(
                self.num_grads, self.fisher_block_size, p.numel(), self.damp, p.device
            )
            for name, p in params.items()
        }
        saved = {p: p.grad for p in model.parameters()}
        was_training = model.training
        model.zero_grad(set_to_none=True)
        model.eval()
        count = 0
        batches = self._sampler_iter(state)
        try:
            with torch.enable_grad():
                for _ in batches:
                    for name, p in params.items():
                        if p.grad is None:
                            continue
                        grad = p.grad.detach()
                        mask = self._masks.get(name)
                        if mask is not None:
                            grad = grad.masked_fill(~mask, 0)
                        finvs[name].add_grad(grad.float())
                    count += 1
                    model.zero_grad(set_to_none=True)
                    if count >= self.num_grads:
                        break
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # run the sampler's own clean-up now, before the step's gradients return
            model.train(was_training)
            for p, grad in saved.items():
                p.grad = grad
        if count == 0:
            raise SparseforgeError(f"{self.name}: the grad sampler yielded no gradient batch")
        if count < self.num_grads:
            logger.warning(
                "%s: the grad sampler gave %d of num_grads=%d gradients",
                self.name,
                count,
                self.num_grads,
            )
        return finvs

    # ----- pruning -------------------------------------------------------------------------------
    def on_update(self, state: TrainingState) -> None:
        targets = self.targets_at(state.epoch, starting=self._start_pending)
        self._start_pending = False
        last = {name: self._last_applied.get(name, 0.0) for name in self._param_names}
        if all(targets[n] <= last[n] for n in self._param_names):
            self._targets = targets
            self._log(state)
            return  # nothing new to prune: skip the costly gradient sampling
        steps = self.num_recomputations
        for i in range(1, steps + 1):
            step_targets = {
                n: interpolate(i, 0, steps, last[n], targets[n]) for n in self._param_names
            }
            self.obs_step(state, step_targets)
        self._last_applied = dict(targets)
        self._targets = dict(targets)

    @torch.no_grad()
    def obs_step(self, state: TrainingState, targets: dict[str, float]) -> None:
        """One OBS pruning step: Fisher inverses, scores, masks, weight update."""
        self.refresh_params(state)
        finvs = self.collect_fisher_inverses(state)
        for name, finv in finvs.items():
            diag = finv.diag()
            if not bool((torch.isfinite(diag) & (diag > 0)).all()):
                # float32 Woodbury updates of 1/damp-sized entries cancel catastrophically when the
                # gradients are large next to damp; pruning with it would write NaN into the model.
                raise SparseforgeError(
                    f"{self.name}: the Fisher inverse of {name} is not finite and positive (float32 "
                    f"round-off: its gradients are large next to damp={self.damp:g}); raise damp, "
                    "e.g. damp: 1e-5 (valid: any float > 0)"
                )
        scores, solved = {}, {}
        for name, finv in finvs.items():
            scores[name], solved[name] = obs_scores(self._param(state, name), finv, self._block)
        previous = dict(self._masks) if self._enforcing else {}
        masks = create_masks(scores, targets, self.structure, self.uses_global_sparsity, previous)
        for name, mask in masks.items():
            param = self._param(state, name)
            before = previous.get(name)
            newly = ~mask if before is None else (before & ~mask.to(before.device))
            param.data.add_(obs_update(param, finvs[name], newly, solved[name]).to(param))
        del finvs
        self._targets = dict(targets)
        self.set_masks(state, masks)
        self._log(state)

    def extra_state(self) -> dict[str, Any]:
        extra = super().extra_state()
        extra["last_applied"] = dict(self._last_applied)
        return extra

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        self._last_applied = {k: float(v) for k, v in state.get("last_applied", {}).items()}
