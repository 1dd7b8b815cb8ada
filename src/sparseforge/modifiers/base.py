"""The modifier base: validated fields, a registry of `!Tag` names, and one small lifecycle.

Every modifier is a pydantic model with unknown fields forbidden, so a typo in a recipe is an
error rather than a silent default. The manager drives the lifecycle:

    initialize(state)              at `Manager.modify()`, before training: bind the run's
        on_initialize                  schedule once, then check the model fits
    update(state)                  before each optimizer step: start / scheduled update / end
        on_start, on_update, on_end    what a subclass overrides
    mask_gradients(state)          after each backward pass (the Trainer calls it before clipping)
    optimizer_pre_step / optimizer_post_step(state)
    loss_update(loss, state, **outputs_and_inputs) -> loss
    finalize(state)                after training, once
        on_finalize
    apply_structure(model)         rebuild what the modifier leaves in a model (e.g. fake-quant
                                   modules) so a saved checkpoint can be loaded into it

Scheduling follows SparseML: epochs are `optimizer steps / steps_per_epoch`, -1 means
"immediately" for a start and "never" for an end, `update_frequency` is in epochs (-1 = every
step). `start_step` / `end_step` / `update_every_steps` are the same in optimizer steps; the
run's one `RunSchedule` turns them into epochs when the manager binds the recipe.

A `Recipe` holds modifiers as immutable *specs* (`is_spec`); each `Manager` runs its own
`instantiate()`d copies, so two managers of one recipe share nothing. Initializing or finalizing
a modifier twice is an error. Built in Python as in SparseML: `EpochRangeModifier(0.0, 10.0)`,
`Modifier.load_list(yaml_text)`, and `str(modifier)` is its recipe YAML.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, PrivateAttr, field_validator, model_validator

from sparseforge.errors import RecipeError, SparseforgeError
from sparseforge.recipe.limits import field_value_problem
from sparseforge.recipe.registry import register  # noqa: F401 - modifiers register through here
from sparseforge.recipe.timeline import RunSchedule

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
    """Where a modifier is in its run (plain attributes: read on every optimizer step).

    `start`, `end` and `frequency` are the modifier's bounds in run epochs, resolved once by
    `bind_schedule` from the run's `RunSchedule` (so step- and epoch-based fields meet there).
    """

    started: bool = False
    ended: bool = False
    last_update_epoch: float = -1.0
    schedule: RunSchedule | None = None
    start: float = -1.0
    end: float = -1.0
    frequency: float = -1.0
    # A recipe's modifier is a spec (validated, immutable data); a Manager runs copies of it.
    is_spec: bool = False
    initialized: bool = False
    finalized: bool = False


class Modifier(BaseModel):
    """Base of every modifier: start/end scheduling and the lifecycle hooks (no-ops here)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, validate_default=True)

    tag: ClassVar[str | None] = None
    # Whether the optimizer's learning rate is set by this modifier (the Trainer then must not).
    controls_learning_rate: ClassVar[bool] = False
    # SparseML's positional order, for `EpochRangeModifier(0.0, 10.0)` in Python.
    positional_fields: ClassVar[tuple[str, ...]] = ()

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

    def __init__(self, *args: Any, **data: Any) -> None:
        """Keyword fields as in a recipe; positional ones in SparseML's order (`positional_fields`)."""
        if args:
            names = type(self).positional_fields
            if len(args) > len(names):
                raise TypeError(
                    f"{type(self).__name__}() takes {len(names)} positional argument(s) "
                    f"({', '.join(names) or 'none'}), got {len(args)}: pass the others by name"
                )
            for name, value in zip(names, args, strict=False):
                if name in data:
                    raise TypeError(f"{type(self).__name__}() got two values for '{name}'")
                data[name] = value
        super().__init__(**data)

    def __setattr__(self, name: str, value: Any) -> None:
        if name[0] != "_" and self._rt.is_spec:
            raise RecipeError(
                f"{self.name}: a recipe's modifiers are immutable specs; change the recipe text "
                "(or recipe_args), or set fields on the modifiers a Manager made (manager.modifiers)"
            )
        super().__setattr__(name, value)

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
        if (
            self.start_step is not None
            and self.end_step is not None
            and min(self.start_step, self.end_step) >= 0
            and self.end_step < self.start_step
        ):
            raise ValueError(f"end_step ({self.end_step}) is before start_step ({self.start_step})")
        return self

    # ----- specs and instances ----------------------------------------------------------------
    @property
    def name(self) -> str:
        return type(self).tag or type(self).__name__

    @property
    def is_spec(self) -> bool:
        """Whether this is a recipe's immutable spec (a Manager runs copies, never the spec)."""
        return self._rt.is_spec

    def as_spec(self) -> Modifier:
        """A validated, immutable copy of this modifier's fields, as a `Recipe` holds it."""
        spec = type(self).model_validate(self.recipe_fields())
        spec._rt.is_spec = True
        return spec

    def instantiate(self) -> Modifier:
        """A new, runnable modifier with these fields and no run state (one per Manager)."""
        return type(self).model_validate(self.recipe_fields())

    def shifted(self, epochs: float, steps: int | None) -> dict[str, Any]:
        """Recipe fields moved `epochs` later (step fields by `steps`), for `compose_staged`.

        Every field named `*_epoch` is a point in time (SparseML's convention); -1 and None
        keep their meaning, except a start of -1 ("at once"), which becomes the new start.
        """
        fields = self.recipe_fields()
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name in ("start_step", "end_step"):
                if value is not None and value >= 0:
                    if steps is None:
                        raise RecipeError(
                            f"{self.name} {name}: {value} is counted in steps; composing it after "
                            "another recipe needs steps_per_epoch"
                        )
                    fields[name] = value + steps
            elif (
                name.endswith("_epoch")
                and isinstance(value, (int, float))
                and not isinstance(value, bool)
            ):
                if value >= 0:
                    fields[name] = value + epochs
                elif name == "start_epoch" and self.start_step is None:
                    fields[name] = float(epochs)  # "at once" means at the start of its stage
        return fields

    # ----- schedule -------------------------------------------------------------------------
    def bind_schedule(self, schedule: RunSchedule) -> None:
        """Resolve this modifier's bounds (epochs or steps) into run epochs through `schedule`."""
        rt = self._rt
        rt.schedule = schedule
        rt.start = schedule.resolve(self.start_epoch, self.start_step, self.name, "start_step")
        rt.end = schedule.resolve(self.end_epoch, self.end_step, self.name, "end_step")
        rt.frequency = self._update_frequency_epochs(rt)

    def _bounds(self) -> tuple[float, float]:
        rt = self._rt
        if rt.schedule is not None:
            return rt.start, rt.end
        schedule = RunSchedule()
        return (
            schedule.resolve(self.start_epoch, self.start_step, self.name, "start_step"),
            schedule.resolve(self.end_epoch, self.end_step, self.name, "end_step"),
        )

    @property
    def scheduled_start(self) -> float:
        """Start epoch in the run's time; -1 = immediately (step fields need a bound schedule)."""
        return self._bounds()[0]

    @property
    def scheduled_end(self) -> float:
        """End epoch in the run's time; -1 = never (step fields need a bound schedule)."""
        return self._bounds()[1]

    @property
    def _epoch_offset(self) -> float:
        """Kept for modifiers that add it to their own epoch fields: recipe stages hold absolute
        epochs (SparseML's reading), so the offset is always 0."""
        return 0.0

    def epoch_bounds(self) -> list[float]:
        """Epochs this modifier needs the run to reach, for `max_epochs` (-1 bounds left out)."""
        return [bound for bound in self._bounds() if bound >= 0]

    @property
    def started(self) -> bool:
        return self._rt.started

    @property
    def ended(self) -> bool:
        return self._rt.ended

    @property
    def initialized(self) -> bool:
        return self._rt.initialized

    @property
    def finalized(self) -> bool:
        return self._rt.finalized

    @property
    def active(self) -> bool:
        """Between its start and its end."""
        rt = self._rt
        return rt.started and not rt.ended

    def _update_frequency_epochs(self, rt: ScheduleRuntime) -> float:
        return -1.0

    def _ready(self, epoch: float, rt: ScheduleRuntime) -> bool:
        """SparseML's rule: start pending, end pending, or an update due by `update_frequency`."""
        start = rt.start
        if not rt.started:
            return not rt.ended and (start == -1 or epoch >= start)
        if rt.ended:
            return False
        end = rt.end
        if end >= 0 and epoch >= end:
            return True
        if epoch <= start:
            return False
        frequency = rt.frequency
        return frequency < 0 or (
            rt.last_update_epoch >= 0 and epoch >= rt.last_update_epoch + frequency - 1e-9
        )

    # ----- lifecycle, driven by the manager --------------------------------------------------
    def initialize(self, state: TrainingState) -> None:
        """Bind to the run (once): resolve the schedule, then `on_initialize` checks the model."""
        rt = self._rt
        if rt.is_spec:
            raise SparseforgeError(
                f"{self.name}: this is a recipe's spec, not a running modifier; "
                "Manager(recipe) makes the instances that run"
            )
        if rt.finalized:
            raise SparseforgeError(f"{self.name}: cannot initialize a modifier that was finalized")
        if rt.initialized:
            raise SparseforgeError(
                f"{self.name}: already initialized; a modifier runs once (build a new Manager from the recipe)"
            )
        if rt.schedule is None or rt.schedule.steps_per_epoch != state.steps_per_epoch:
            self.bind_schedule(RunSchedule(state.steps_per_epoch))
        self.on_initialize(state)
        rt.initialized = True

    def update(self, state: TrainingState) -> None:
        """Start, update or end this modifier at the current epoch, as SparseML's schedule does."""
        rt = self._rt
        if not rt.initialized:
            raise SparseforgeError(f"{self.name}: update() before initialize()")
        epoch = state.epoch
        if not self._ready(epoch, rt):
            return
        if not rt.started:
            rt.started = True
            self.on_start(state)
        rt.last_update_epoch = epoch
        self.on_update(state)
        end = rt.end
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
        """End of the run (once): `on_finalize` removes training-only machinery."""
        rt = self._rt
        if not rt.initialized:
            raise SparseforgeError(
                f"{self.name}: cannot finalize a modifier that was never initialized"
            )
        if rt.finalized:
            raise SparseforgeError(f"{self.name}: already finalized; a modifier is finalized once")
        self.on_finalize(state)
        rt.finalized = True

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

    def on_finalize(self, state: TrainingState) -> None:
        """After training: remove training-only machinery, keep what must persist."""

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

    def on_load(self, state: TrainingState) -> None:
        """After `load_state_dict` on a bound run: re-apply the loaded state to the model now
        (e.g. zero pruned weights), not at the next step."""

    # ----- serialization ----------------------------------------------------------------------
    def recipe_fields(self) -> dict[str, Any]:
        """The fields as a recipe states them: those the recipe set, in declaration order."""
        dumped = self.model_dump(mode="python")
        return {
            name: dumped[name] for name in type(self).model_fields if name in self.model_fields_set
        }

    def __eq__(self, other: object) -> bool:
        """Equal modifiers are the same class with the same field values (run state aside), so a
        recipe's spec equals the modifier it was made from."""
        if not isinstance(other, Modifier):
            return NotImplemented
        return type(self) is type(other) and self.model_dump() == other.model_dump()

    __hash__ = None  # type: ignore[assignment]

    def __str__(self) -> str:
        """The modifier as recipe YAML (`!Name` and its fields), as SparseML prints it."""
        from sparseforge.recipe.yaml_io import dump_yaml, represent_tagged

        return dump_yaml([represent_tagged(self.name, self.recipe_fields())])

    @staticmethod
    def load_list(text: str) -> list[Modifier]:
        """SparseML's `Modifier.load_list`: runnable modifiers from recipe YAML (a list or a recipe)."""
        from sparseforge.recipe.recipe import Recipe

        return [spec.instantiate() for spec in Recipe.load(text).modifiers]

    @staticmethod
    def load_obj(text: str) -> Modifier:
        """SparseML's `Modifier.load_obj`: the one modifier of `text`."""
        mods = Modifier.load_list(text)
        if len(mods) != 1:
            raise RecipeError(f"load_obj expects one modifier, the YAML holds {len(mods)}")
        return mods[0]


class UpdatingModifier(Modifier):
    """A modifier that also updates periodically between start and end (`update_frequency`)."""

    update_frequency: float = -1.0
    update_every_steps: int | None = None

    @model_validator(mode="after")
    def _check_frequency(self) -> UpdatingModifier:
        if (
            "update_frequency" in self.model_fields_set
            and "update_every_steps" in self.model_fields_set
        ):
            raise ValueError("set either update_frequency or update_every_steps, not both")
        if self.update_frequency != -1 and self.update_frequency <= 0:
            raise ValueError(
                f"update_frequency must be > 0 epochs or -1 (every step), got {self.update_frequency}"
            )
        if self.update_every_steps is not None and self.update_every_steps < 1:
            raise ValueError(f"update_every_steps must be >= 1, got {self.update_every_steps}")
        return self

    def _update_frequency_epochs(self, rt: ScheduleRuntime) -> float:
        if self.update_every_steps is not None:
            schedule = rt.schedule or RunSchedule()
            return schedule.epoch_of_step(self.update_every_steps)
        return self.update_frequency
