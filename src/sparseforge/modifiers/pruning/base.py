"""The shared pruning modifier: which parameters, their masks, and masks that never leak.

Masks are bool tensors held per parameter *name* (True = keep) and parameters are looked up by
name through the model at every use, so a module swapped for a fake-quantized one that keeps the
same Parameter keeps its mask. While a mask is enforced:

- the masked gradients are zeroed after each backward pass (SparseTrainer calls it before
  gradient clipping, so the clipped norm is the live weights') and again before each optimizer
  step (so gradient accumulation, AMP or bf16 autocast cannot move a pruned weight; masks
  multiply, which is ~10x faster than `masked_fill_` on CPU, so a NaN gradient stays NaN as it
  would anyway), and when a
  mask changes the optimizer's per-parameter state (Adam's `exp_avg` / `exp_avg_sq`, SGD momentum)
  is zeroed where pruned, so stale moments cannot resurrect a weight later;
- after each optimizer step the mask is re-applied to the weights (any optimizer, any decay).

`GradualPruningModifier` adds SparseML's schedule: `init_sparsity` at `start_epoch`, the
`inter_func` curve at every `update_frequency`, exactly `final_sparsity` at `end_epoch`.
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, PrivateAttr, field_validator, model_validator

from sparseforge.errors import ModelMatchError
from sparseforge.modifiers.base import TrainingState, UpdatingModifier
from sparseforge.modifiers.pruning.masks import (
    NM_TOLERANCE,
    MaskStructure,
    check_shape,
    create_masks,
    parse_mask_type,
)
from sparseforge.modifiers.pruning.schedule import check_inter_func, interpolate
from sparseforge.modifiers.selection import as_pattern_list, select_parameters

logger = logging.getLogger(__name__)

FROM_PARAM = "__FROM_PARAM__"
# state.extras key: name -> (zeros, numel) of every masked parameter, for the run-wide totals.
_PRUNED_COUNTS = "pruning/param_counts"


def zero_count(tensor: torch.Tensor) -> int:
    return int(tensor.numel() - torch.count_nonzero(tensor))


class PruningModifier(UpdatingModifier):
    """Base of every mask-based pruning modifier (see the module docstring)."""

    params: str | list[str] = Field(default_factory=list)
    # SparseML logging options: accepted so SparseML recipes load; sparseforge logs through state.logs.
    log_types: str | list[str] | None = None

    _param_names: list[str] = PrivateAttr(default_factory=list)
    _masks: dict[str, torch.Tensor] = PrivateAttr(default_factory=dict)
    # the masks as 1.0/0.0 in each parameter's dtype: multiplying is ~10x faster than masked_fill_
    _keep: dict[str, torch.Tensor] = PrivateAttr(default_factory=dict)
    _targets: dict[str, float] = PrivateAttr(default_factory=dict)
    _enforcing: bool = PrivateAttr(default=False)
    _moments_dirty: bool = PrivateAttr(default=False)
    _release_after_step: bool = PrivateAttr(default=False)
    _state: TrainingState | None = PrivateAttr(default=None)
    _cache: dict[str, torch.nn.Parameter] = PrivateAttr(default_factory=dict)

    @property
    def leaves_masks_enabled(self) -> bool:
        """Whether masks stay enforced after `end_epoch` (until finalize)."""
        return True

    # ----- parameters ----------------------------------------------------------------------
    def select_params(self, model: torch.nn.Module) -> list[str]:
        """Names of the parameters this modifier prunes (ModelMatchError if a pattern matches none)."""
        return list(select_parameters(model, self.params, owner=self.name))

    def check_params(self, params: dict[str, torch.nn.Parameter]) -> None:
        """Raise ModelMatchError if a selected parameter cannot take this modifier's masks."""

    @property
    def param_names(self) -> list[str]:
        return list(self._param_names)

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """Current keep-masks by parameter name (True = kept)."""
        return dict(self._masks)

    def _param(self, state: TrainingState, name: str) -> torch.nn.Parameter:
        param = self._cache.get(name)
        if param is None:
            param = self._cache[name] = state.model.get_parameter(name)
        return param

    def refresh_params(self, state: TrainingState) -> None:
        """Look the parameters up by name again (modules may have been swapped since)."""
        named = dict(state.model.named_parameters())
        self._cache = {
            n: named[n] if n in named else state.model.get_parameter(n) for n in self._param_names
        }

    def on_initialize(self, state: TrainingState) -> None:
        self._state = state
        names = self.select_params(state.model)
        if not names:
            raise ModelMatchError(f"{self.name}: params select no parameter of the model")
        self._param_names = names
        self.refresh_params(state)
        self.check_params({name: self._param(state, name) for name in names})

    # ----- masks -----------------------------------------------------------------------------
    @torch.no_grad()
    def set_masks(self, state: TrainingState, masks: dict[str, torch.Tensor]) -> None:
        """Install new masks, zero the pruned weights and (at the next step) optimizer state."""
        for name, mask in masks.items():
            param = self._param(state, name)
            self._masks[name] = mask.to(device=param.device, dtype=torch.bool)
            self._keep[name] = self._masks[name].to(param.dtype)
        self._enforcing = True
        self._moments_dirty = True
        self.apply_masks(state)

    @torch.no_grad()
    def apply_masks(self, state: TrainingState) -> None:
        for name, keep in self._keep.items():
            self._param(state, name).data.mul_(keep)

    @torch.no_grad()
    def _zero_optimizer_state(self, state: TrainingState) -> None:
        optimizer = state.optimizer
        if optimizer is None:
            return
        for name, mask in self._masks.items():
            param = self._param(state, name)
            for value in optimizer.state.get(param, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == param.shape:
                    value.masked_fill_(~mask, 0)

    @torch.no_grad()
    def mask_gradients(self, state: TrainingState) -> None:
        if not self._enforcing:
            return
        self.refresh_params(state)
        for name, keep in self._keep.items():
            grad = self._param(state, name).grad
            if grad is not None:
                grad.mul_(keep if grad.dtype == keep.dtype else keep.to(grad.dtype))

    @torch.no_grad()
    def optimizer_pre_step(self, state: TrainingState) -> None:
        if not self._enforcing:
            return
        self.mask_gradients(state)
        if self._moments_dirty:
            self._zero_optimizer_state(state)
            self._moments_dirty = False

    def optimizer_post_step(self, state: TrainingState) -> None:
        if self._enforcing:
            self.apply_masks(state)
        if self._release_after_step:
            self._enforcing = False
            self._release_after_step = False

    def on_end(self, state: TrainingState) -> None:
        self.apply_masks(state)
        # the end step itself is still masked, so training leaves end_epoch at the final sparsity
        self._release_after_step = not self.leaves_masks_enabled

    def on_finalize(self, state: TrainingState) -> None:
        if self._enforcing:
            self.apply_masks(state)
        self._enforcing = False
        self._masks = {}
        self._keep = {}

    def on_load(self, state: TrainingState) -> None:
        """Resume: the loaded masks hold on the weights at once, not from the next step."""
        if self._enforcing:
            self.refresh_params(state)
            self.apply_masks(state)

    # ----- reporting -------------------------------------------------------------------------
    @property
    def applied_sparsity(self) -> float | list[float] | None:
        """SparseML's read-out: the sparsity last applied (one value, or one per parameter when
        they differ); None before the first mask."""
        if not self._targets:
            return None
        values = [self._targets[name] for name in self._param_names if name in self._targets]
        return values[0] if len(set(values)) == 1 else values

    def sparsity_status(
        self, model: torch.nn.Module | None = None
    ) -> dict[str, dict[str, float | None]]:
        """Per parameter: the current target sparsity (None if none) and the measured one."""
        model = model if model is not None else (self._state.model if self._state else None)
        if model is None:
            return {}
        status = {}
        for name in self._param_names:
            param = model.get_parameter(name)
            status[name] = {
                "target": self._targets.get(name),
                "measured": zero_count(param) / max(param.numel(), 1),
            }
        return status

    def _log(self, state: TrainingState) -> None:
        counts = state.extras.setdefault(_PRUNED_COUNTS, {})
        for name in self._param_names:
            param = self._param(state, name)
            zeros = zero_count(param)
            state.logs[f"sparsity/{name}"] = zeros / max(param.numel(), 1)
            counts[name] = (zeros, param.numel())
        total_zeros = sum(z for z, _ in counts.values())
        total = sum(n for _, n in counts.values())
        state.logs["sparsity/total_pruned_params"] = float(total_zeros)
        state.logs["sparsity/total"] = total_zeros / max(total, 1)

    # ----- checkpointing ----------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {
            "masks": {name: mask.detach().cpu().clone() for name, mask in self._masks.items()},
            "targets": dict(self._targets),
            "enforcing": self._enforcing and not self._release_after_step,
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        masks = state.get("masks", {})
        unknown = sorted(set(masks) - set(self._param_names))
        if unknown:
            raise ModelMatchError(
                f"{self.name}: saved masks for parameters this run does not prune: {unknown[:5]}"
            )
        self._masks, self._keep = {}, {}
        for name, mask in masks.items():
            param = self._param(self._state, name) if self._state else mask
            self._masks[name] = mask.to(device=param.device, dtype=torch.bool)
            self._keep[name] = self._masks[name].to(
                param.dtype if param.is_floating_point() else torch.float32
            )
        self._targets = {k: float(v) for k, v in state.get("targets", {}).items()}
        self._enforcing = bool(state.get("enforcing", bool(self._masks)))
        self._moments_dirty = self._enforcing


class GradualPruningModifier(PruningModifier):
    """SparseML's gradual pruning: a scorer, one mask creator, and the interpolated schedule."""

    # Whether masks rank all parameters together (GlobalMagnitude, OBS) or each apart.
    global_by_default: ClassVar[bool] = False
    # SparseML's positional order: GMPruningModifier(0.05, 0.8, 0.0, 10.0, 1.0, ["re:.*weight"])
    positional_fields = (
        "init_sparsity",
        "final_sparsity",
        "start_epoch",
        "end_epoch",
        "update_frequency",
        "params",
    )

    init_sparsity: float | Literal["__FROM_PARAM__"]
    final_sparsity: float | dict[float, list[str]]
    inter_func: Literal["linear", "cubic", "inverse_cubic"] = "cubic"
    mask_type: str | list[int] = "unstructured"
    leave_enabled: bool = True

    _init_by_name: dict[str, float] = PrivateAttr(default_factory=dict)
    _final_by_name: dict[str, float] = PrivateAttr(default_factory=dict)
    _start_pending: bool = PrivateAttr(default=False)

    @field_validator("inter_func", mode="before")
    @classmethod
    def _check_inter_func(cls, value: Any) -> Any:
        return check_inter_func(value)

    @field_validator("mask_type", mode="before")
    @classmethod
    def _unquoted_n_m(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 60:
            # YAML 1.1 reads an unquoted 2:4 as the base-60 integer 124
            n, m = divmod(value, 60)
            raise ValueError(
                f"mask_type {value} is how YAML reads an unquoted {n}:{m}; write it quoted: '{n}:{m}'"
            )
        return value

    @model_validator(mode="after")
    def _check_gradual(self) -> GradualPruningModifier:
        finals = self._check_sparsity_range()
        self._check_params_given()
        try:
            structure = parse_mask_type(self.mask_type)
        except ValueError as err:
            raise ValueError(f"mask_type: {err}") from None
        if structure.kind == "nm":
            for final in finals:
                if final > structure.nm_sparsity + NM_TOLERANCE:
                    raise ValueError(
                        f"final_sparsity {final} is above what {structure.describe()} allows "
                        f"({structure.nm_sparsity:g}); use final_sparsity {structure.nm_sparsity:g}"
                    )
        if self.end_epoch == -1 and self.end_step is None:
            raise ValueError("end_epoch is required: the epoch at which final_sparsity is reached")
        if (
            self.uses_global_sparsity
            and isinstance(self.final_sparsity, dict)
            and len(self.final_sparsity) > 1
        ):
            raise ValueError(
                "global sparsity needs a single final_sparsity, not a mapping of several"
            )
        return self

    def _check_sparsity_range(self) -> list[float]:
        """init_sparsity and every final sparsity within [0, 1]; returns the final sparsities."""
        if isinstance(self.init_sparsity, float) and not 0.0 <= self.init_sparsity <= 1.0:
            raise ValueError(
                f"init_sparsity must be within [0, 1] or {FROM_PARAM}, got {self.init_sparsity}"
            )
        finals = (
            list(self.final_sparsity)
            if isinstance(self.final_sparsity, dict)
            else [self.final_sparsity]
        )
        for final in finals:
            if not 0.0 <= final <= 1.0:
                raise ValueError(f"final_sparsity values must be within [0, 1], got {final}")
        return finals

    def _check_params_given(self) -> None:
        """Parameters come from `params` or from a final_sparsity mapping, exactly one of them."""
        if isinstance(self.final_sparsity, dict):
            if as_pattern_list(self.params):
                raise ValueError(
                    "when final_sparsity maps sparsities to parameters, params must be [] (or left out)"
                )
            for final, patterns in self.final_sparsity.items():
                if not as_pattern_list(patterns):
                    raise ValueError(f"final_sparsity entry {final} lists no parameters")
        elif not as_pattern_list(self.params):
            raise ValueError(
                "params is required: parameter names, 're:' patterns, __ALL__ or __ALL_PRUNABLE__"
            )

    @property
    def structure(self) -> MaskStructure:
        return parse_mask_type(self.mask_type)

    @property
    def uses_global_sparsity(self) -> bool:
        return bool(getattr(self, "global_sparsity", type(self).global_by_default))

    # ----- parameters ----------------------------------------------------------------------
    def select_params(self, model: torch.nn.Module) -> list[str]:
        if not isinstance(self.final_sparsity, dict):
            names = super().select_params(model)
            self._final_by_name = {name: float(self.final_sparsity) for name in names}
            return names
        finals: dict[str, float] = {}
        for final, patterns in self.final_sparsity.items():
            field = f"final_sparsity[{final}]"
            for name in select_parameters(model, patterns, owner=self.name, field=field):
                finals.setdefault(name, float(final))
        self._final_by_name = finals
        return list(finals)

    def check_params(self, params: dict[str, torch.nn.Parameter]) -> None:
        structure = self.structure
        for name, param in params.items():
            problem = check_shape(param.shape, structure)
            if problem:
                raise ModelMatchError(
                    f"{self.name}: mask_type {self.mask_type!r} cannot prune {name} {tuple(param.shape)}: {problem}"
                )

    # ----- schedule ----------------------------------------------------------------------------
    def _init_for(self, name: str) -> float:
        if self.init_sparsity == FROM_PARAM:
            return self._init_by_name.get(name, 0.0)
        return float(self.init_sparsity)

    def target_at(self, epoch: float, init: float, final: float, starting: bool = False) -> float:
        """Sparsity the schedule asks for at `epoch` (run time): exactly init at the start
        update, exactly final from `end_epoch` on, the `inter_func` curve in between."""
        start, end = max(self.scheduled_start, 0.0), self.scheduled_end
        if epoch >= end:
            return final
        if starting:
            return init
        return interpolate(epoch, start, end, init, final, self.inter_func)

    def targets_at(self, epoch: float, starting: bool = False) -> dict[str, float]:
        return {
            name: self.target_at(epoch, self._init_for(name), self._final_by_name[name], starting)
            for name in self._param_names
        }

    def schedule_values(self, epoch: float) -> dict[str, float]:
        """The sparsity in force at `epoch`: the target of the last mask update at or before it."""
        start = max(self.scheduled_start, 0.0)
        if epoch < start:
            return {}
        frequency = self._update_frequency_epochs(self._rt)
        if 0 < frequency < float("inf") and epoch < self.scheduled_end:
            epoch = start + math.floor((epoch - start) / frequency + 1e-9) * frequency
        init = 0.0 if self.init_sparsity == FROM_PARAM else float(self.init_sparsity)
        finals = (
            sorted(set(self.final_sparsity))
            if isinstance(self.final_sparsity, dict)
            else [float(self.final_sparsity)]
        )
        if len(finals) == 1:
            return {"sparsity": self.target_at(epoch, init, finals[0])}
        return {f"sparsity[{final:g}]": self.target_at(epoch, init, final) for final in finals}

    def schedule_events(self) -> list[tuple[float, str]]:
        init = (
            self.init_sparsity if isinstance(self.init_sparsity, str) else f"{self.init_sparsity:g}"
        )
        final = (
            "/".join(f"{f:g}" for f in sorted(self.final_sparsity))
            if isinstance(self.final_sparsity, dict)
            else f"{self.final_sparsity:g}"
        )
        scope = "global" if self.uses_global_sparsity else "per parameter"
        start = max(self.scheduled_start, 0.0)
        return [
            (
                start,
                f"{self.name} starts: sparsity {init} -> {final} ({self.inter_func}, {self.structure.describe()}, {scope})",
            ),
            (
                self.scheduled_end,
                f"{self.name} reaches sparsity {final}"
                + ("" if self.leave_enabled else "; masks released"),
            ),
        ]

    @property
    def leaves_masks_enabled(self) -> bool:
        return self.leave_enabled

    # ----- lifecycle -------------------------------------------------------------------------
    def on_start(self, state: TrainingState) -> None:
        self._start_pending = True
        if self.init_sparsity == FROM_PARAM:
            params = {name: self._param(state, name) for name in self._param_names}
            if self.uses_global_sparsity:
                overall = sum(zero_count(p) for p in params.values()) / max(
                    sum(p.numel() for p in params.values()), 1
                )
                self._init_by_name = dict.fromkeys(params, overall)
            else:
                self._init_by_name = {
                    name: zero_count(p) / max(p.numel(), 1) for name, p in params.items()
                }

    def score(self, state: TrainingState) -> dict[str, torch.Tensor]:
        """Importance of every weight of every pruned parameter (higher = keep)."""
        raise NotImplementedError

    def on_update(self, state: TrainingState) -> None:
        targets = self.targets_at(state.epoch, starting=self._start_pending)
        self._start_pending = False
        self.prune_to(state, targets)

    @torch.no_grad()
    def prune_to(self, state: TrainingState, targets: dict[str, float]) -> dict[str, torch.Tensor]:
        """Score, create masks at `targets`, install them; returns the previous masks."""
        self.refresh_params(state)
        scores = self.score(state)
        previous = dict(self._masks) if self._enforcing else {}
        masks = create_masks(scores, targets, self.structure, self.uses_global_sparsity, previous)
        self._targets = dict(targets)
        self.set_masks(state, masks)
        self._log(state)
        return previous

    def extra_state(self) -> dict[str, Any]:
        extra = super().extra_state()
        extra["init_by_name"] = dict(self._init_by_name)
        return extra

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        self._init_by_name = {k: float(v) for k, v in state.get("init_by_name", {}).items()}
