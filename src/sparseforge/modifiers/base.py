"""The modifier base: validated fields, a registry of `!Tag` names, and one small lifecycle.

Every modifier is a pydantic model with unknown fields forbidden, so a typo in a recipe is an
error rather than a silent default. The manager drives the lifecycle:

    initialize(state)              at `Manager.modify()`, before training: check the model fits
    update(state)                  before each optimizer step: start / scheduled update / end
        on_start, on_update, on_end    what a subclass overrides
    mask_gradients(state)          after each backward pass (the Trainer calls it before clipping)
    optimizer_pre_step / optimizer_post_step(state)
    loss_update(loss, state, **outputs_and_inputs) -> loss
    finalize(state)                after training
    apply_structure(model)         rebuild what the modifier leaves in a model (e.g. fake-quant
                                   modules) so a saved checkpoint can be loaded into it

Scheduling follows SparseML: epochs are `optimizer steps / steps_per_epoch`, -1 means
"immediately" for a start and "never" for an end, `update_frequency` is in epochs (-1 = every
step). `start_step` / `end_step` / `update_every_steps` are the same in optimizer steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, PrivateAttr, field_validator, model_validator

from sparseforge.errors import RecipeError  # noqa: F401 - re-exported for modifiers
from sparseforge.recipe.limits import field_value_problem
from sparseforge.recipe.registry import register  # noqa: F401 - modifiers register through here

# A callable that, for `num_batches` batches of training data, runs forward and backward on the
# model and yields after each backward pass with gradients in `param.grad` (OBS pruning uses it).
GradSampler = Callable[[torch.nn.Module, int], Iterator[None]]


@dataclass
class TrainingState:
    """What the manager shares with every modifier: the model, optimizer and schedule position."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer | None
    steps_per_epoch: int
    step: int = 0
    teacher: torch.nn.Module | None = None
    grad_sampler: GradSampler | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    logs: dict[str, float] = field(default_factory=dict)
    # What modifiers compute once per `Manager.loss_update` call and share (the teacher's
    # outputs); emptied when the call returns.
    loss_update_cache: dict[str, Any] = field(default_factory=dict)

    @property
    def epoch(self) -> float:
        return self.step / self.steps_per_epoch


@dataclass
class ScheduleRuntime:
    """Where a modifier is in its schedule (plain attributes: read on every optimizer step)."""

    started: bool = False
    ended: bool = False
    last_update_epoch: float = -1.0
    epoch_offset: float = 0.0
    steps_per_epoch: int | None = None


class Modifier(BaseModel):
    """Base of every modifier: start/end scheduling and the lifecycle hooks (no-ops here)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, validate_default=True)

    tag: ClassVar[str | None] = None
    # Whether the optimizer's learning rate is set by this modifier (the Trainer then must not).
    controls_learning_rate: ClassVar[bool] = False

    start_epoch: float = -1.0
    end_epoch: float = -1.0
    start_step: int | None = None
    end_step: int | None = None

    # Runtime state lives in one plain object: pydantic's private-attribute access is slow, and
    # update() runs every optimizer step.
    _rt: ScheduleRuntime = PrivateAttr(default_factory=lambda: ScheduleRuntime())

    @field_validator("*", mode="after")
    @classmethod
    def _bounded_values(cls, value: Any) -> Any:
        """Every field of every modifier: no NaN/inf, no absurd integers, `re:` patterns that compile."""
        problem = field_value_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _check_schedule(self) -> Modifier:
        set_fields = self.model_fields_set
        for epoch_name, step_name in (("start_epoch", "start_step"), ("end_epoch", "end_step")):
            if epoch_name in set_fields and step_name in set_fields:
                raise ValueError(f"set either {epoch_name} or {step_name}, not both")
        start, end = self.start_epoch, self.end_epoch
        if start < -1 or (start < 0 and start != -1):
            raise ValueError(f"start_epoch must be >= 0 or -1 (immediately), got {start}")
        if end < -1 or (end < 0 and end != -1):
            raise ValueError(f"end_epoch must be >= 0 or -1 (never), got {end}")
        if end != -1 and start != -1 and end < start:
            raise ValueError(f"end_epoch ({end}) is before start_epoch ({start})")
        for name in ("start_step", "end_step"):
            value = getattr(self, name)
            if value is not None and value < -1:
                raise ValueError(f"{name} must be >= 0 or -1, got {value}")
        return self

    # ----- schedule -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return type(self).tag or type(self).__name__

    def _epoch_of(self, epoch: float, step: int | None, rt: ScheduleRuntime) -> float:
        if step is not None:
            if step == -1:
                return -1.0
            if rt.steps_per_epoch is None:
                raise RuntimeError(f"{self.name}: steps_per_epoch is unknown before initialize()")
            return step / rt.steps_per_epoch + rt.epoch_offset
        return epoch + rt.epoch_offset if epoch >= 0 else -1.0

    @property
    def scheduled_start(self) -> float:
        """Start epoch in the run's time (stage offset applied); -1 = immediately."""
        return self._epoch_of(self.start_epoch, self.start_step, self._rt)

    @property
    def scheduled_end(self) -> float:
        """End epoch in the run's time (stage offset applied); -1 = never."""
        return self._epoch_of(self.end_epoch, self.end_step, self._rt)

    def epoch_bounds(self) -> list[float]:
        """Epochs this modifier needs the run to reach, for `max_epochs` (stage offset applied)."""
        rt = self._rt
        bounds = []
        for epoch, step in ((self.start_epoch, self.start_step), (self.end_epoch, self.end_step)):
            if step is None and epoch >= 0:
                bounds.append(epoch + rt.epoch_offset)
            elif step is not None and step >= 0 and rt.steps_per_epoch:
                bounds.append(step / rt.steps_per_epoch + rt.epoch_offset)
        return bounds

    # Short names for the runtime state, used by subclasses and the recipe loader.
    @property
    def _started(self) -> bool:
        return self._rt.started

    @_started.setter
    def _started(self, value: bool) -> None:
        self._rt.started = value

    @property
    def _ended(self) -> bool:
        return self._rt.ended

    @_ended.setter
    def _ended(self, value: bool) -> None:
        self._rt.ended = value

    @property
    def _epoch_offset(self) -> float:
        return self._rt.epoch_offset

    @_epoch_offset.setter
    def _epoch_offset(self, value: float) -> None:
        self._rt.epoch_offset = value

    @property
    def _steps_per_epoch(self) -> int | None:
        return self._rt.steps_per_epoch

    @_steps_per_epoch.setter
    def _steps_per_epoch(self, value: int | None) -> None:
        self._rt.steps_per_epoch = value

    @property
    def started(self) -> bool:
        return self._rt.started

    @property
    def ended(self) -> bool:
        return self._rt.ended

    @property
    def active(self) -> bool:
        """Between its start and its end."""
        rt = self._rt
        return rt.started and not rt.ended

    def _update_frequency_epochs(self, rt: ScheduleRuntime) -> float:
        return -1.0

    def _ready(self, epoch: float, rt: ScheduleRuntime) -> bool:
        start = self._epoch_of(self.start_epoch, self.start_step, rt)
        if not rt.started:
            return not rt.ended and (start == -1 or epoch >= start)
        if rt.ended:
            return False
        end = self._epoch_of(self.end_epoch, self.end_step, rt)
        if end >= 0 and epoch >= end:
            return True
        if epoch <= start:
            return False
        frequency = self._update_frequency_epochs(rt)
        return frequency < 0 or (rt.last_update_epoch >= 0 and epoch >= rt.last_update_epoch + frequency - 1e-9)

    def update_ready(self, epoch: float) -> bool:
        """SparseML's rule: start pending, end pending, or an update due by `update_frequency`."""
        return self._ready(epoch, self._rt)

    # ----- lifecycle, driven by the manager --------------------------------------------------
    def initialize(self, state: TrainingState) -> None:
        self._rt.steps_per_epoch = state.steps_per_epoch
        self.on_initialize(state)

    def update(self, state: TrainingState) -> None:
        """Start, update or end this modifier at the current epoch, as SparseML's schedule does."""
        rt = self._rt
        epoch = state.epoch
        if not self._ready(epoch, rt):
            return
        if not rt.started:
            rt.started = True
            self.on_start(state)
        rt.last_update_epoch = epoch
        self.on_update(state)
        end = self._epoch_of(self.end_epoch, self.end_step, rt)
        if end >= 0 and epoch >= end:
            rt.ended = True
            self.on_end(state)

    def mask_gradients(self, state: TrainingState) -> None:
        """Called after a backward pass: zero gradients the step must not apply."""

    def optimizer_pre_step(self, state: TrainingState) -> None:
        """Called just before the wrapped optimizer's step (after `update`)."""

    def optimizer_post_step(self, state: TrainingState) -> None:
        """Called just after the wrapped optimizer's step."""

    def loss_update(self, loss: torch.Tensor, state: TrainingState, **kwargs: Any) -> torch.Tensor:
        """Return the (possibly modified) training loss; kwargs are model outputs and inputs."""
        return loss

    def finalize(self, state: TrainingState) -> None:
        """Called once after training: remove training-only machinery, keep what must persist."""

    def apply_structure(self, model: torch.nn.Module) -> None:
        """Rebuild the structure this modifier leaves in a trained model (default: none)."""

    def needs_training_batches(self) -> bool:
        """Whether it draws batches through `state.grad_sampler` (so `--one_shot` needs train data)."""
        return False

    # ----- overridable hooks -----------------------------------------------------------------
    def on_initialize(self, state: TrainingState) -> None:
        """Check the model fits the modifier's fields; raise ModelMatchError if not."""

    def on_start(self, state: TrainingState) -> None:
        """The schedule reached `start_epoch`."""

    def on_update(self, state: TrainingState) -> None:
        """A scheduled update: at start, at each `update_frequency`, and at `end_epoch`."""

    def on_end(self, state: TrainingState) -> None:
        """The schedule reached `end_epoch`."""

    # ----- describing the schedule (for `sparseforge recipe check`) ---------------------------
    def schedule_events(self) -> list[tuple[float, str]]:
        """(epoch, text) of what happens when: by default the start and the end."""
        events = [(max(self.scheduled_start, 0.0), f"{self.name} starts")]
        if self.scheduled_end >= 0:
            events.append((self.scheduled_end, f"{self.name} ends"))
        return events

    def schedule_values(self, epoch: float) -> dict[str, float]:
        """Named targets at `epoch` for the schedule table (e.g. a pruning modifier's sparsity)."""
        return {}

    # ----- checkpointing ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Schedule position plus whatever `extra_state()` returns (tensors allowed)."""
        rt = self._rt
        return {
            "started": rt.started,
            "ended": rt.ended,
            "last_update_epoch": rt.last_update_epoch,
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rt = self._rt
        rt.started = bool(state["started"])
        rt.ended = bool(state["ended"])
        rt.last_update_epoch = float(state["last_update_epoch"])
        self.load_extra_state(state.get("extra") or {})

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what `extra_state()` saved."""

    # ----- serialization ----------------------------------------------------------------------
    def recipe_fields(self) -> dict[str, Any]:
        """The fields as a recipe states them: those the recipe set, in declaration order."""
        dumped = self.model_dump(mode="python")
        return {name: dumped[name] for name in type(self).model_fields if name in self.model_fields_set}


class UpdatingModifier(Modifier):
    """A modifier that also updates periodically between start and end (`update_frequency`)."""

    update_frequency: float = -1.0
    update_every_steps: int | None = None

    @model_validator(mode="after")
    def _check_frequency(self) -> UpdatingModifier:
        if "update_frequency" in self.model_fields_set and "update_every_steps" in self.model_fields_set:
            raise ValueError("set either update_frequency or update_every_steps, not both")
        if self.update_frequency != -1 and self.update_frequency <= 0:
            raise ValueError(f"update_frequency must be > 0 epochs or -1 (every step), got {self.update_frequency}")
        if self.update_every_steps is not None and self.update_every_steps < 1:
            raise ValueError(f"update_every_steps must be >= 1, got {self.update_every_steps}")
        return self

    def _update_frequency_epochs(self, rt: ScheduleRuntime) -> float:
        if self.update_every_steps is not None:
            if rt.steps_per_epoch is None:
                raise RuntimeError(f"{self.name}: steps_per_epoch is unknown before initialize()")
            return self.update_every_steps / rt.steps_per_epoch
        return self.update_frequency


def clamp01(value: float) -> float:
    return min(1.0, max(0.0, value))


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
