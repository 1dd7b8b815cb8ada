"""`Manager`: the one object that binds a recipe to a model and an optimizer.

    manager = Manager.from_recipe("recipe.yaml")
    optimizer = manager.modify(model, optimizer, steps_per_epoch)   # validates, wraps step()
    ... loss = manager.loss_update(loss, **outputs_and_inputs) ...
    manager.finalize(model)

The recipe is data; the manager makes its own modifier instances from it (two managers of one
recipe share nothing) and, when it binds to a model, the run's one `RunSchedule` (steps <->
epochs). Modifiers due at the starting epoch are applied inside `modify()`/`initialize()`, as in
SparseML, so a frozen layer or a QAT module is in place for the first forward pass. The wrapped
optimizer's `step()` advances the schedule (epoch = steps / steps_per_epoch), runs the modifiers'
updates and pre/post-step hooks around the real step, and otherwise behaves as the optimizer it
wraps (LR schedulers, AMP grad scalers and the Hugging Face Trainer accept it).

SparseML's signatures are accepted beside the shorter ones: `initialize(module, epoch, loggers)`,
`update(module, optimizer, epoch, steps_per_epoch)`, `loss_update(loss, module, optimizer, epoch,
steps_per_epoch, **kwargs)`, `optimizer_pre_step/optimizer_post_step(module, optimizer, epoch,
steps_per_epoch)`, `modify(..., epoch=)` to resume, `apply(module, epoch=inf)`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from sparseforge.errors import SparseforgeError
from sparseforge.modifiers.base import GradSampler, Modifier, TrainingState
from sparseforge.recipe import Recipe
from sparseforge.recipe.timeline import RunSchedule, max_epochs_of

logger = logging.getLogger(__name__)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _live_modifiers(source: Any) -> list[Modifier] | None:
    """Modifier objects a caller built (SparseML style): the manager runs those very objects."""
    if isinstance(source, Sequence) and not isinstance(source, (str, bytes)) and source:
        if all(isinstance(mod, Modifier) and not mod.is_spec for mod in source):
            return list(source)
    return None


class Manager:
    """Runs a recipe's modifiers over a training run; see the module docstring."""

    def __init__(
        self,
        recipe: Recipe | Any,
        args: str | Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ):
        live = _live_modifiers(recipe)
        if live is not None:
            if args:
                raise SparseforgeError("recipe_args cannot be applied to Modifier objects")
            self.recipe = Recipe.from_modifiers(live)
            self._modifiers = live
        else:
            self.recipe = Recipe.load(recipe, args)
            self._modifiers = self.recipe.instantiate()
        self._owns_modifiers = live is None
        self.metadata = dict(metadata) if metadata else self.recipe.metadata
        self.schedule: RunSchedule | None = None
        self.state: TrainingState | None = None
        self._steps_known = False
        # Fixed at initialize(): the order modifiers update in.
        self._update_order: list[Modifier] = []
        self._updated_step: int | None = None
        self._finalized = False

    @classmethod
    def from_recipe(cls, source: Any, args: str | Mapping[str, Any] | None = None) -> Manager:
        """Load `source` (path, YAML text, dict, modifiers) with variable overrides `args`."""
        return cls(source, args)

    # ----- views -----------------------------------------------------------------------------
    @property
    def modifiers(self) -> list[Modifier]:
        """This manager's own modifier instances, in recipe order."""
        return self._modifiers

    def iter_modifiers(self) -> Iterator[Modifier]:
        """SparseML's `iter_modifiers()`."""
        return iter(self._modifiers)

    def num_stages(self) -> int:
        return self.recipe.num_stages()

    def end_epoch_at(self, steps_per_epoch: int | None = None) -> float:
        """Where the run ends, in epochs (not rounded); step-based recipes need `steps_per_epoch`."""
        if steps_per_epoch is None and self.schedule is not None and self._steps_known:
            steps_per_epoch = self.schedule.steps_per_epoch
        return self.recipe.end_epoch_at(steps_per_epoch)

    @property
    def end_epoch(self) -> float:
        return self.end_epoch_at()

    @property
    def max_epochs(self) -> int:
        return max_epochs_of(self.end_epoch_at())

    @property
    def controls_learning_rate(self) -> bool:
        """True when a recipe modifier sets the learning rate (a Trainer's scheduler must step aside)."""
        return any(type(mod).controls_learning_rate for mod in self._modifiers)

    @property
    def step(self) -> int:
        return self.state.step if self.state else 0

    @property
    def epoch(self) -> float:
        return self.state.epoch if self.state else 0.0

    def __str__(self) -> str:
        """The recipe as YAML, as SparseML's managers print."""
        return self.recipe.to_yaml()

    def save(self, path: str | os.PathLike) -> Path:
        """Write the recipe YAML to `path` (atomically)."""
        return self.recipe.save(path)

    @classmethod
    def compose_staged(
        cls,
        base_recipe: Any,
        additional_recipe: Any,
        keep_original_epochs: bool = False,
        save_path: str | os.PathLike | None = None,
        steps_per_epoch: int | None = None,
    ) -> Manager:
        """SparseML's `compose_staged` (see `Recipe.compose_staged`); saved to `save_path` if given."""
        base = base_recipe.recipe if isinstance(base_recipe, Manager) else base_recipe
        additional = (
            additional_recipe.recipe
            if isinstance(additional_recipe, Manager)
            else additional_recipe
        )
        manager = cls(
            Recipe.compose_staged(base, additional, keep_original_epochs, steps_per_epoch)
        )
        if save_path is not None:
            manager.save(save_path)
        return manager

    # ----- lifecycle ---------------------------------------------------------------------------
    def initialize(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | float | None = None,
        steps_per_epoch: int | Any | None = None,
        *,
        epoch: float | None = None,
        loggers: Any = None,
        distillation_teacher: torch.nn.Module | str | None = None,
        grad_sampler: GradSampler | None = None,
        **extras: Any,
    ) -> TrainingState:
        """Bind the recipe to `model` (once): every modifier checks the model fits, then those due
        at `epoch` (default 0) are applied.

        Also SparseML's `initialize(module, epoch, loggers)`: without `steps_per_epoch` the schedule
        counts one step per epoch until `modify()` / `update()` give the real number.
        """
        if _is_number(optimizer):  # SparseML: initialize(module, epoch, loggers)
            if epoch is not None:
                raise TypeError("initialize() got the epoch twice")
            epoch, optimizer = float(optimizer), None
            if steps_per_epoch is not None and not _is_number(steps_per_epoch):
                loggers, steps_per_epoch = steps_per_epoch, None
        if self.state is not None:
            raise SparseforgeError(
                "the manager is already initialized; build a new Manager for another run"
            )
        self._steps_known = steps_per_epoch is not None
        if steps_per_epoch is None:
            if self.recipe.uses_steps:
                raise SparseforgeError(
                    "this recipe counts optimizer steps: pass steps_per_epoch "
                    "(initialize(model, optimizer, steps_per_epoch) or modify(...))"
                )
            steps_per_epoch = 1
        if (
            not isinstance(steps_per_epoch, int)
            or isinstance(steps_per_epoch, bool)
            or steps_per_epoch < 1
        ):
            raise SparseforgeError(
                f"steps_per_epoch must be a positive integer, got {steps_per_epoch!r}"
            )
        self.schedule = RunSchedule(steps_per_epoch)
        self.state = TrainingState(
            model=model,
            optimizer=optimizer,
            steps_per_epoch=steps_per_epoch,
            step=self.schedule.step_of_epoch(self._start_epoch(epoch)),
            teacher=self._teacher_for(distillation_teacher, model),
            grad_sampler=grad_sampler,
            extras=dict(extras, loggers=loggers) if loggers is not None else dict(extras),
        )
        try:
            for mod in self._modifiers:
                mod.bind_schedule(self.schedule)
                mod.initialize(self.state)
        except Exception:
            # Leave no half-bound run: a recipe's manager can be initialized again after a fix.
            self.state, self.schedule = None, None
            if self._owns_modifiers:
                self._modifiers = self.recipe.instantiate()
            raise
        # Later-starting modifiers update last, so a schedule that starts where another ends wins.
        self._update_order = sorted(self._modifiers, key=lambda mod: mod.scheduled_start)
        self.update()  # SparseML applies what is due at the starting epoch before the first step
        return self.state

    def _teacher_for(self, teacher: Any, model: torch.nn.Module) -> torch.nn.Module | None:
        """The frozen teacher module (or None) the distillation modifiers receive; "self" is
        copied only when the recipe distills."""
        from sparseforge.modifiers.distillation import _TeacherMixin, resolve_teacher

        if not any(isinstance(mod, _TeacherMixin) for mod in self._modifiers):
            return None
        return resolve_teacher(teacher, model)

    def _start_epoch(self, epoch: float | None) -> float:
        if epoch is None:
            return 0.0
        if not _is_number(epoch) or epoch < 0:
            raise SparseforgeError(f"epoch must be a number >= 0, got {epoch!r}")
        if math.isinf(epoch):  # SparseML's apply(epoch=inf): the end of the recipe
            return max(
                self.recipe.end_epoch_at(self.schedule.steps_per_epoch if self.schedule else None),
                0.0,
            )
        return float(epoch)

    def modify(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        steps_per_epoch: int,
        wrap_optim: Any = None,
        epoch: float | None = None,
        **kwargs: Any,
    ) -> ScheduledOptimizer:
        """Initialize on `model` and return `optimizer` wrapped so its step() runs the recipe.

        `epoch` starts the schedule there (SparseML's resume); after SparseML's
        `initialize(model, epoch)` this attaches the optimizer and steps_per_epoch instead.
        """
        if self.state is None:
            self.initialize(model, optimizer, steps_per_epoch, epoch=epoch, **kwargs)
        else:
            if model is not self.state.model:
                raise SparseforgeError("modify() was given a different model than initialize()")
            self._position(optimizer, epoch, steps_per_epoch)
        return ScheduledOptimizer(optimizer, self)

    def apply(
        self, module: torch.nn.Module, epoch: float = math.inf, finalize: bool = True, **kwargs: Any
    ) -> None:
        """SparseML's one-shot `apply`: every modifier as it stands at `epoch` (default: the end)."""
        self.initialize(module, None, kwargs.pop("steps_per_epoch", 1), epoch=epoch, **kwargs)
        if finalize:
            self.finalize(module)

    def _require_state(self) -> TrainingState:
        if self.state is None:
            raise SparseforgeError(
                "the manager is not initialized: call manager.modify(model, optimizer, steps_per_epoch) first"
            )
        return self.state

    def _position(
        self, optimizer: Any = None, epoch: float | None = None, steps_per_epoch: int | None = None
    ) -> TrainingState:
        """SparseML's calls carry the optimizer, epoch and steps_per_epoch: take what they change."""
        state = self._require_state()
        if optimizer is not None and state.optimizer is None:
            state.optimizer = (
                optimizer.optimizer if isinstance(optimizer, ScheduledOptimizer) else optimizer
            )
        if steps_per_epoch is not None and (
            not self._steps_known or steps_per_epoch != state.steps_per_epoch
        ):
            current = state.epoch if epoch is None else epoch
            self.schedule = RunSchedule(steps_per_epoch)
            self._steps_known = True
            state.steps_per_epoch = steps_per_epoch
            for mod in self._modifiers:
                mod.bind_schedule(self.schedule)
            epoch = current
        if epoch is not None:
            step = self.schedule.step_of_epoch(float(epoch))
            if step != state.step:
                state.step = step
                self._updated_step = None
        return state

    def update(
        self,
        module: torch.nn.Module | None = None,
        optimizer: Any = None,
        epoch: float | None = None,
        steps_per_epoch: int | None = None,
        **_: Any,
    ) -> None:
        """Start / update / end modifiers for the current step (once per step, however often called)."""
        state = self._position(optimizer, epoch, steps_per_epoch)
        if self._updated_step == state.step:
            return
        self._updated_step = state.step
        for mod in self._update_order:
            mod.update(state)

    def mask_gradients(self) -> None:
        """Zero the pruned weights' gradients now. SparseTrainer calls it after every backward
        pass so gradient clipping and the logged grad_norm see only the weights that train (the
        optimizer step masks again, for loops that do not call this)."""
        state = self._require_state()
        for mod in self._modifiers:
            mod.mask_gradients(state)

    def optimizer_pre_step(
        self,
        module: Any = None,
        optimizer: Any = None,
        epoch: float | None = None,
        steps_per_epoch: int | None = None,
    ) -> None:
        state = self._position(optimizer, epoch, steps_per_epoch)
        self.update()
        for mod in self._modifiers:
            mod.optimizer_pre_step(state)

    def optimizer_post_step(
        self,
        module: Any = None,
        optimizer: Any = None,
        epoch: float | None = None,
        steps_per_epoch: int | None = None,
    ) -> None:
        state = self._position(optimizer, epoch, steps_per_epoch)
        for mod in self._modifiers:
            mod.optimizer_post_step(state)
        state.step += 1

    def loss_update(
        self,
        loss: torch.Tensor,
        module: Any = None,
        optimizer: Any = None,
        epoch: float | None = None,
        steps_per_epoch: int | None = None,
        **outputs_and_inputs: Any,
    ) -> torch.Tensor:
        """Let active modifiers change the loss (distillation); kwargs: student outputs and inputs."""
        state = self._position(optimizer, epoch, steps_per_epoch)
        self.update()
        try:
            for mod in self._modifiers:
                if mod.active:
                    loss = mod.loss_update(loss, state, **outputs_and_inputs)
        finally:
            state.loss_update_cache.clear()
        return loss

    def finalize(self, model: torch.nn.Module | None = None, **_: Any) -> None:
        """End of training: each modifier removes its training-only machinery (a second call does nothing)."""
        state = self._require_state()
        if model is not None and model is not state.model:
            raise SparseforgeError("finalize() was given a different model than modify()")
        if self._finalized:
            return
        for mod in self._modifiers:
            mod.finalize(state)
        self._finalized = True

    def apply_structure(self, model: torch.nn.Module, epoch: float | None = None) -> None:
        """Rebuild the structure the recipe leaves in a trained model (quantization, removed layers)
        so that a checkpoint saved after training loads into `model` with the same outputs.
        `epoch` is accepted for SparseML's signature (the structure is the recipe's end state)."""
        for mod in self._modifiers:
            mod.apply_structure(model)

    # ----- checkpointing -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Schedule position and every modifier's state (masks, observers...), for exact resume."""
        state = self._require_state()
        return {
            "step": state.step,
            "steps_per_epoch": state.steps_per_epoch,
            "modifiers": [mod.state_dict() for mod in self._modifiers],
        }

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        """Continue a run from `state_dict()`; call after `modify()` on the resumed model.

        What `modify()` applied at its starting epoch is first closed for modifiers the checkpoint
        has not started or has ended; then each modifier's state is loaded and re-applied to the
        model at once (pruned weights are zero again before the next forward pass).
        """
        state = self._require_state()
        if len(saved["modifiers"]) != len(self._modifiers):
            raise SparseforgeError(
                f"saved manager state has {len(saved['modifiers'])} modifiers, this recipe has {len(self._modifiers)}"
            )
        if int(saved["steps_per_epoch"]) != state.steps_per_epoch:
            logger.warning(
                "resuming with steps_per_epoch=%d where the run began with %d: epochs are rescaled",
                state.steps_per_epoch,
                saved["steps_per_epoch"],
            )
        state.step = int(saved["step"])
        self._updated_step = None
        for mod, mod_state in zip(self._modifiers, saved["modifiers"], strict=True):
            if mod.active and (mod_state["ended"] or not mod_state["started"]):
                mod.on_end(state)
            mod.load_state_dict(mod_state)
            mod.on_load(state)

    # ----- reporting ---------------------------------------------------------------------------
    def logs(self) -> dict[str, float]:
        """Scalars the modifiers reported at the last update (learning rate, sparsity...)."""
        return dict(self.state.logs) if self.state else {}


class ScheduledModifierManager(Manager):
    """SparseML-compatible spelling: `ScheduledModifierManager.from_yaml(path, recipe_variables)`."""

    @classmethod
    def from_yaml(
        cls,
        file_path: Any,
        add_modifiers: Iterable[Modifier] | None = None,
        recipe_variables: Any = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> ScheduledModifierManager:
        manager = cls(file_path, recipe_variables, metadata=metadata)
        extra = list(add_modifiers or [])
        if extra:
            # SparseML runs the very objects it was given: they join this manager's instances.
            manager.recipe = manager.recipe.with_modifiers(extra)
            manager._modifiers = [
                *manager._modifiers,
                *(mod.instantiate() if mod.is_spec else mod for mod in extra),
            ]
            manager._owns_modifiers = False
        return manager


class ScheduledOptimizer(torch.optim.Optimizer):
    """A torch optimizer whose `step()` runs the manager's schedule around the wrapped step.

    It does not own parameters or state: `param_groups`, `state`, `defaults`, `state_dict()` and
    `zero_grad()` are the wrapped optimizer's, so schedulers and grad scalers act on the real one.
    """

    def __init__(  # noqa: D107
        self,
        optimizer: torch.optim.Optimizer,
        manager: Manager | torch.nn.Module,
        sparseml_manager: Manager | None = None,
        steps_per_epoch: int | None = None,
        loggers: Any = None,
    ):
        if not isinstance(manager, Manager):
            # SparseML: ScheduledOptimizer(optimizer, module, manager, steps_per_epoch, loggers)
            module, manager = manager, sparseml_manager
            if not isinstance(manager, Manager) or steps_per_epoch is None:
                raise TypeError(
                    "ScheduledOptimizer(optimizer, manager) or, as in SparseML, "
                    "ScheduledOptimizer(optimizer, module, manager, steps_per_epoch, loggers)"
                )
            if manager.state is None:
                manager.initialize(module, optimizer, steps_per_epoch, loggers=loggers)
            else:
                manager._position(optimizer, None, steps_per_epoch)
        # torch.optim.Optimizer.__init__ would build new param groups; we share the wrapped ones.
        self.__dict__["optimizer"] = optimizer
        self.__dict__["manager"] = manager
        for hooks in (
            "_optimizer_step_pre_hooks",
            "_optimizer_step_post_hooks",
            "_optimizer_state_dict_pre_hooks",
            "_optimizer_state_dict_post_hooks",
            "_optimizer_load_state_dict_pre_hooks",
            "_optimizer_load_state_dict_post_hooks",
        ):
            self.__dict__[hooks] = {}

    # Attribute access falls through to the wrapped optimizer.
    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["optimizer"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__ or name in ("step",):
            self.__dict__[name] = value
        else:
            setattr(self.__dict__["optimizer"], name, value)

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"ScheduledOptimizer({self.optimizer!r})"

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.optimizer.state = value

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.optimizer.defaults = value

    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        self.manager.optimizer_pre_step()
        result = self.optimizer.step(closure) if closure is not None else self.optimizer.step()
        self.manager.optimizer_post_step()
        return result

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)

    def loss_update(self, loss: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """SparseML's `ScheduledOptimizer.loss_update`."""
        return self.manager.loss_update(loss, **kwargs)
