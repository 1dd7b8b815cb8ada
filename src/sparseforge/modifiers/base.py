"""The modifier base: validated fields, a registry of `!Tag` names, and one small lifecycle.

Every modifier is a pydantic model with unknown fields forbidden, so a typo in a recipe is an
error rather than a silent default. The manager drives the lifecycle:

    initialize(state)              at `Manager.modify()`, before training: check the model fits
    update(state)                  before each optimizer step: start / scheduled update / end
        on_start, on_update, on_end    what a subclass overrides
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
from pydantic import BaseModel, ConfigDict, PrivateAttr, model_validator

from sparseforge.errors import RecipeError  # noqa: F401 - re-exported for modifiers
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

    @property
    def epoch(self) -> float:
        return self.step / self.steps_per_epoch


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

    _started: bool = PrivateAttr(default=False)
    _ended: bool = PrivateAttr(default=False)
    _last_update_epoch: float = PrivateAttr(default=-1.0)
    _epoch_offset: float = PrivateAttr(default=0.0)
    _steps_per_epoch: int | None = PrivateAttr(default=None)

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

    def _epoch_of(self, epoch: float, step: int | None) -> float:
        if step is not None:
            if step == -1:
                return -1.0
            if self._steps_per_epoch is None:
                raise RuntimeError(f"{self.name}: steps_per_epoch is unknown before initialize()")
            return step / self._steps_per_epoch + self._epoch_offset
        return epoch + self._epoch_offset if epoch >= 0 else -1.0

    @property
    def scheduled_start(self) -> float:
        """Start epoch in the run's time (stage offset applied); -1 = immediately."""
        return self._epoch_of(self.start_epoch, self.start_step)

    @property
    def scheduled_end(self) -> float:
        """End epoch in the run's time (stage offset applied); -1 = never."""
        return self._epoch_of(self.end_epoch, self.end_step)

    def epoch_bounds(self) -> list[float]:
        """Epochs this modifier needs the run to reach, for `max_epochs` (stage offset applied)."""
        bounds = []
        for epoch, step in ((self.start_epoch, self.start_step), (self.end_epoch, self.end_step)):
            if step is None and epoch >= 0:
                bounds.append(epoch + self._epoch_offset)
            elif step is not None and step >= 0 and self._steps_per_epoch:
                bounds.append(step / self._steps_per_epoch + self._epoch_offset)
        return bounds

    @property
    def started(self) -> bool:
        return self._started

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def active(self) -> bool:
        """Between its start and its end."""
        return self._started and not self._ended

    def _update_frequency_epochs(self) -> float:
        return -1.0

    def update_ready(self, epoch: float) -> bool:
        start, end = self.scheduled_start, self.scheduled_end
        if not self._started and not self._ended and (start == -1 or epoch >= start):
            return True
        if self._started and not self._ended and end >= 0 and epoch >= end:
            return True
        frequency = self._update_frequency_epochs()
        return (
            self._started
            and not self._ended
            and epoch > start
            and frequency != 0
            and (frequency < 0 or (self._last_update_epoch >= 0 and epoch >= self._last_update_epoch + frequency - 1e-9))
        )

    # ----- lifecycle, driven by the manager --------------------------------------------------
    def initialize(self, state: TrainingState) -> None:
        self._steps_per_epoch = state.steps_per_epoch
        self.on_initialize(state)

    def update(self, state: TrainingState) -> None:
        """Start, update or end this modifier at the current epoch, as SparseML's schedule does."""
        epoch = state.epoch
        if not self.update_ready(epoch):
            return
        starting = not self._started
        if starting:
            self._started = True
            self.on_start(state)
        self._last_update_epoch = epoch
        self.on_update(state)
        end = self.scheduled_end
        if end >= 0 and epoch >= end:
            self._ended = True
            self.on_end(state)

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
        return {
            "started": self._started,
            "ended": self._ended,
            "last_update_epoch": self._last_update_epoch,
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._started = bool(state["started"])
        self._ended = bool(state["ended"])
        self._last_update_epoch = float(state["last_update_epoch"])
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

    def _update_frequency_epochs(self) -> float:
        if self.update_every_steps is not None:
            if self._steps_per_epoch is None:
                raise RuntimeError(f"{self.name}: steps_per_epoch is unknown before initialize()")
            return self.update_every_steps / self._steps_per_epoch
        return self.update_frequency


def clamp01(value: float) -> float:
    return min(1.0, max(0.0, value))


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
