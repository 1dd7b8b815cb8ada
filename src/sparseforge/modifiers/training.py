"""Training-schedule modifiers: epochs, learning rate, weight decay, trainable parameters.

Formulas are SparseML's, so a SparseML recipe gives the same learning rate at every step. The
torch-scheduler form (`LearningRateModifier`) is computed in closed form from the step count,
which gives the values SparseML's stepped torch schedulers give and makes resuming exact.
"""

from __future__ import annotations

import bisect
import math
from typing import Any, Literal

from pydantic import PrivateAttr, field_validator, model_validator

from sparseforge.errors import ModelMatchError
from sparseforge.modifiers.base import Modifier, TrainingState, register
from sparseforge.modifiers.selection import select_parameters


def _check_param_groups(
    modifier: Modifier, param_groups: list[int] | None, state: TrainingState
) -> None:
    if param_groups is None or state.optimizer is None:
        return
    count = len(state.optimizer.param_groups)
    bad = [index for index in param_groups if not 0 <= index < count]
    if bad:
        raise ModelMatchError(
            f"{modifier.name}: param_groups {bad} do not exist; the optimizer has {count} group(s) (0..{count - 1})"
        )


def set_learning_rate(state: TrainingState, lr: float, param_groups: list[int] | None) -> None:
    if state.optimizer is None:
        return
    for index, group in enumerate(state.optimizer.param_groups):
        if param_groups is None or index in param_groups:
            group["lr"] = lr


class _LearningRateSetter(Modifier):
    """What the learning-rate modifiers share: the LR they applied last (SparseML's read-out)."""

    controls_learning_rate = True

    _applied_lr: float | None = PrivateAttr(default=None)

    @property
    def applied_learning_rate(self) -> float | None:
        """The learning rate this modifier set last; None before it set one."""
        return self._applied_lr

    def _apply_lr(self, state: TrainingState, lr: float, param_groups: list[int] | None) -> None:
        set_learning_rate(state, lr, param_groups)
        self._applied_lr = lr
        state.logs["learning_rate"] = lr


@register
class EpochRangeModifier(Modifier):
    """Sets the length of training: the run lasts until the latest `end_epoch` of the recipe."""

    positional_fields = ("start_epoch", "end_epoch")


@register
class SetLearningRateModifier(_LearningRateSetter):
    """Sets the learning rate once, at `start_epoch`."""

    positional_fields = ("learning_rate", "param_groups", "start_epoch", "end_epoch")

    learning_rate: float | None
    param_groups: list[int] | None = None
    constant_logging: bool = False

    def on_initialize(self, state: TrainingState) -> None:
        _check_param_groups(self, self.param_groups, state)

    def on_start(self, state: TrainingState) -> None:
        if self.learning_rate is not None:
            self._apply_lr(state, self.learning_rate, self.param_groups)


@register
class LearningRateFunctionModifier(_LearningRateSetter):
    """Moves the learning rate from `init_lr` to `final_lr` between start and end by `lr_func`."""

    positional_fields = (
        "lr_func",
        "init_lr",
        "final_lr",
        "start_epoch",
        "end_epoch",
        "cycle_epochs",
        "param_groups",
    )

    lr_func: Literal["linear", "cosine", "cyclic_linear"]
    init_lr: float
    final_lr: float
    cycle_epochs: float = 1.0
    param_groups: list[int] | None = None
    # Accepted and ignored, as SparseML does: the learning rate is set at every step.
    update_frequency: float = -1.0
    constant_logging: bool = False

    @field_validator("init_lr", "final_lr")
    @classmethod
    def _lr_range(cls, value: float) -> float:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"must be within [0.0, 1.0], got {value}")
        return value

    @model_validator(mode="after")
    def _check(self) -> LearningRateFunctionModifier:
        if self.end_epoch == -1 and self.end_step is None:
            raise ValueError(
                "end_epoch (or end_step) is required: the function needs an end to interpolate to"
            )
        if self.end_step is None and self.start_step is None and self.end_epoch <= self.start_epoch:
            raise ValueError(
                f"end_epoch ({self.end_epoch}) must be greater than start_epoch ({self.start_epoch})"
            )
        if self.lr_func == "cyclic_linear" and self.cycle_epochs <= 0:
            raise ValueError("cycle_epochs must be positive for cyclic_linear")
        return self

    def learning_rate_at(self, epoch: float, steps_per_epoch: int) -> float:
        """SparseML's value of `lr_func` at `epoch` (run time, stage offset included)."""
        start = max(self.scheduled_start, 0.0)
        end = self.scheduled_end
        if self.lr_func == "linear":
            return self.init_lr + ((epoch - start) / (end - start)) * (self.final_lr - self.init_lr)
        if self.lr_func == "cosine":
            x_norm = (epoch - start) / (end - start)
            if self.final_lr < self.init_lr:
                y_range, y_shift, x_shift = self.init_lr - self.final_lr, self.final_lr, 0.0
            else:
                y_range, y_shift, x_shift = self.final_lr - self.init_lr, self.init_lr, math.pi
            return math.cos(x_norm * math.pi + x_shift) * y_range / 2 + y_range / 2 + y_shift
        # cyclic_linear
        start_epoch = self.scheduled_start
        end_step = end * steps_per_epoch
        start_step = start_epoch * steps_per_epoch
        cycle_steps = self.cycle_epochs * steps_per_epoch
        current_step = (epoch - start_epoch) * steps_per_epoch
        if current_step > int((end_step - start_step) / cycle_steps) * cycle_steps:
            cycle_steps = (end_step - start_step) % cycle_steps
        adjusted_step = current_step % cycle_steps
        return self.init_lr - (adjusted_step / (cycle_steps - 1)) * (self.init_lr - self.final_lr)

    def on_initialize(self, state: TrainingState) -> None:
        _check_param_groups(self, self.param_groups, state)

    def on_update(self, state: TrainingState) -> None:
        self._apply_lr(
            state, self.learning_rate_at(state.epoch, state.steps_per_epoch), self.param_groups
        )


@register
class LearningRateModifier(_LearningRateSetter):
    """torch's StepLR / MultiStepLR / ExponentialLR / CosineAnnealingWarmRestarts, with epochs in
    `lr_kwargs` converted to steps as SparseML does (ExponentialLR decays once per epoch)."""

    positional_fields = (
        "lr_class",
        "lr_kwargs",
        "init_lr",
        "start_epoch",
        "end_epoch",
        "update_frequency",
    )

    lr_class: Literal["StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingWarmRestarts"]
    lr_kwargs: dict[str, Any]
    init_lr: float
    update_frequency: float = -1.0
    constant_logging: bool = False
    param_groups: list[int] | None = None

    @model_validator(mode="after")
    def _check(self) -> LearningRateModifier:
        if self.update_frequency != -1.0:
            raise ValueError("update_frequency must be kept at -1")
        if not 0.0 < self.init_lr <= 1.0:
            raise ValueError(f"init_lr must be in (0, 1], got {self.init_lr}")
        required = {
            "StepLR": ("step_size",),
            "MultiStepLR": ("milestones",),
            "ExponentialLR": ("gamma",),
            "CosineAnnealingWarmRestarts": ("lr_min", "cycle_epochs"),
        }[self.lr_class]
        missing = [key for key in required if key not in self.lr_kwargs]
        if missing:
            raise ValueError(f"lr_kwargs for {self.lr_class} needs {', '.join(missing)}")
        self._check_kwarg_types()
        if self.lr_class == "MultiStepLR":
            for mile in self.lr_kwargs["milestones"]:
                if mile <= self.start_epoch:
                    raise ValueError(
                        f"milestones {self.lr_kwargs['milestones']} must all be after start_epoch {self.start_epoch}"
                    )
                if self.end_epoch >= 0 and mile >= self.end_epoch:
                    raise ValueError(
                        f"milestones {self.lr_kwargs['milestones']} must all be before end_epoch {self.end_epoch}"
                    )
        return self

    def _check_kwarg_types(self) -> None:
        """Numbers where numbers are needed, so a recipe's `milestones: ['1']` fails at load, not in training."""
        for key, value in self.lr_kwargs.items():
            if key == "milestones":
                if not isinstance(value, list) or not all(_is_finite_number(m) for m in value):
                    raise ValueError(
                        f"lr_kwargs milestones must be a list of epochs (numbers), got {value!r}"
                    )
            elif not isinstance(value, bool) and not _is_finite_number(value):
                raise ValueError(f"lr_kwargs {key} must be a number, got {value!r}")
            elif key in ("step_size", "cycle_epochs") and not value > 0:
                raise ValueError(f"lr_kwargs {key} must be > 0 epochs, got {value!r}")
            elif key == "T_mult" and not (isinstance(value, int) and value >= 1):
                raise ValueError(
                    f"lr_kwargs T_mult must be an integer >= 1 (as torch's), got {value!r}"
                )

    def _scheduler_steps(self, step: int, steps_per_epoch: int) -> int:
        """How many times SparseML would have stepped its torch scheduler by global step `step`."""
        start_step = round(max(self.scheduled_start, 0.0) * steps_per_epoch)
        if self.scheduled_end >= 0:
            step = min(step, round(self.scheduled_end * steps_per_epoch) - 1)
        return max(step - start_step, 0)

    def learning_rate_at(self, step: int, steps_per_epoch: int) -> float:
        kwargs = self.lr_kwargs
        if self.lr_class == "CosineAnnealingWarmRestarts":
            start = max(self.scheduled_start, 0.0)
            epoch = step / steps_per_epoch
            if self.scheduled_end >= 0:
                epoch = min(
                    epoch, (round(self.scheduled_end * steps_per_epoch) - 1) / steps_per_epoch
                )
            t = max(epoch - start, 0.0)
            t_0, t_mult, eta_min = kwargs["cycle_epochs"], kwargs.get("T_mult", 1), kwargs["lr_min"]
            if t_mult == 1:
                t_cur, t_i = t % t_0, t_0
            else:
                n = int(math.log(t / t_0 * (t_mult - 1) + 1, t_mult))
                t_cur = t - t_0 * (t_mult**n - 1) / (t_mult - 1)
                t_i = t_0 * t_mult**n
            return eta_min + (self.init_lr - eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2
        n = self._scheduler_steps(step, steps_per_epoch)
        gamma = kwargs.get("gamma", 0.1)
        if self.lr_class == "MultiStepLR":
            milestones = sorted(
                round((m - self.start_epoch) * steps_per_epoch) for m in kwargs["milestones"]
            )
            return self.init_lr * gamma ** bisect.bisect_right(milestones, n)
        step_size = 1.0 if self.lr_class == "ExponentialLR" else kwargs["step_size"]
        return self.init_lr * gamma ** (n // round(step_size * steps_per_epoch))

    def on_initialize(self, state: TrainingState) -> None:
        _check_param_groups(self, self.param_groups, state)

    def on_update(self, state: TrainingState) -> None:
        self._apply_lr(
            state, self.learning_rate_at(state.step, state.steps_per_epoch), self.param_groups
        )


@register
class SetWeightDecayModifier(Modifier):
    """Sets the optimizer's weight decay at `start_epoch` (all param groups, or those listed)."""

    positional_fields = ("weight_decay", "start_epoch", "param_groups", "end_epoch")

    weight_decay: float
    param_groups: list[int] | None = None
    constant_logging: bool = False

    def on_initialize(self, state: TrainingState) -> None:
        _check_param_groups(self, self.param_groups, state)

    def on_start(self, state: TrainingState) -> None:
        if state.optimizer is None:
            return
        for index, group in enumerate(state.optimizer.param_groups):
            if self.param_groups is None or index in self.param_groups:
                group["weight_decay"] = self.weight_decay


@register
class TrainableParamsModifier(Modifier):
    """Freezes (or unfreezes) `params` from start to end; their previous state returns at the end."""

    positional_fields = ("params", "trainable", "params_strict", "start_epoch", "end_epoch")

    params: str | list[str]
    trainable: bool
    params_strict: bool = True

    _previous: dict[str, bool] = PrivateAttr(default_factory=dict)

    def on_initialize(self, state: TrainingState) -> None:
        if self.params_strict:
            select_parameters(state.model, self.params, owner=self.name)

    def _selected(self, state: TrainingState) -> dict[str, Any]:
        try:
            return select_parameters(state.model, self.params, owner=self.name)
        except ModelMatchError:
            if self.params_strict:
                raise
            return {}

    def on_start(self, state: TrainingState) -> None:
        selected = self._selected(state)
        self._previous = {name: param.requires_grad for name, param in selected.items()}
        for param in selected.values():
            param.requires_grad_(self.trainable)

    def on_end(self, state: TrainingState) -> None:
        for name, param in self._selected(state).items():
            param.requires_grad_(self._previous.get(name, True))

    def extra_state(self) -> dict[str, Any]:
        return {"previous": dict(self._previous)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._previous = dict(state.get("previous", {}))

    def on_load(self, state: TrainingState) -> None:
        """Resume inside the window: the parameters are frozen (or unfrozen) again at once."""
        if self.active:
            for param in self._selected(state).values():
                param.requires_grad_(self.trainable)


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
