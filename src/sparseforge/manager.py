"""`Manager`: the one object that binds a recipe to a model and an optimizer.

    manager = Manager.from_recipe("recipe.yaml")
    optimizer = manager.modify(model, optimizer, steps_per_epoch)   # validates, wraps step()
    ... loss = manager.loss_update(loss, **outputs_and_inputs) ...
    manager.finalize(model)

The wrapped optimizer's `step()` advances the schedule (epoch = steps / steps_per_epoch), runs
the modifiers' updates and pre/post-step hooks around the real step, and otherwise behaves as the
optimizer it wraps (LR schedulers, AMP grad scalers and the Hugging Face Trainer accept it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from sparseforge.errors import SparseforgeError
from sparseforge.modifiers.base import GradSampler, Modifier, TrainingState
from sparseforge.recipe import Recipe

logger = logging.getLogger(__name__)


class Manager:
    """Runs a recipe's modifiers over a training run; see the module docstring."""

    def __init__(self, recipe: Recipe | Any, args: str | Mapping[str, Any] | None = None):
        self.recipe = Recipe.load(recipe, args)
        self.state: TrainingState | None = None
        # Fixed at initialize(): the modifiers bound to the model, and the order they update in.
        self._bound_modifiers: list[Modifier] = []
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
        return self.recipe.modifiers

    @property
    def max_epochs(self) -> int:
        return self.recipe.max_epochs

    @property
    def end_epoch(self) -> float:
        return self.recipe.end_epoch

    @property
    def controls_learning_rate(self) -> bool:
        """True when a recipe modifier sets the learning rate (a Trainer's scheduler must step aside)."""
        return any(type(mod).controls_learning_rate for mod in self.modifiers)

    @property
    def step(self) -> int:
        return self.state.step if self.state else 0

    @property
    def epoch(self) -> float:
        return self.state.epoch if self.state else 0.0

    def _in_update_order(self) -> list[Modifier]:
        # Later-starting modifiers update last, so a schedule that starts where another ends wins.
        return sorted(self.modifiers, key=lambda mod: mod.scheduled_start)

    # ----- lifecycle ---------------------------------------------------------------------------
    def initialize(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        steps_per_epoch: int = 1,
        *,
        distillation_teacher: torch.nn.Module | None = None,
        grad_sampler: GradSampler | None = None,
        **extras: Any,
    ) -> TrainingState:
        """Bind the recipe to `model`: every modifier checks the model fits before any training."""
        if not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
            raise SparseforgeError(f"steps_per_epoch must be a positive integer, got {steps_per_epoch!r}")
        self.state = TrainingState(
            model=model,
            optimizer=optimizer,
            steps_per_epoch=steps_per_epoch,
            teacher=distillation_teacher,
            grad_sampler=grad_sampler,
            extras=dict(extras),
        )
        self._bound_modifiers = self.modifiers
        for mod in self._bound_modifiers:
            mod.initialize(self.state)
        self._update_order = self._in_update_order()
        return self.state

    def modify(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        steps_per_epoch: int,
        **kwargs: Any,
    ) -> ScheduledOptimizer:
        """Initialize on `model` and return `optimizer` wrapped so its step() runs the recipe."""
        self.initialize(model, optimizer, steps_per_epoch, **kwargs)
        return ScheduledOptimizer(optimizer, self)

    def _require_state(self) -> TrainingState:
        if self.state is None:
            raise SparseforgeError("the manager is not initialized: call manager.modify(model, optimizer, steps_per_epoch) first")
        return self.state

    def update(self) -> None:
        """Start / update / end modifiers for the current step (once per step, however often called)."""
        state = self._require_state()
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
        for mod in self._bound_modifiers:
            mod.mask_gradients(state)

    def optimizer_pre_step(self) -> None:
        state = self._require_state()
        self.update()
        for mod in self._bound_modifiers:
            mod.optimizer_pre_step(state)

    def optimizer_post_step(self) -> None:
        state = self._require_state()
        for mod in self._bound_modifiers:
            mod.optimizer_post_step(state)
        state.step += 1

    def loss_update(self, loss: torch.Tensor, **outputs_and_inputs: Any) -> torch.Tensor:
        """Let active modifiers change the loss (distillation); kwargs: student outputs and inputs."""
        state = self._require_state()
        self.update()
        try:
            for mod in self._bound_modifiers:
                if mod.active:
                    loss = mod.loss_update(loss, state, **outputs_and_inputs)
        finally:
            state.loss_update_cache.clear()
        return loss

    def finalize(self, model: torch.nn.Module | None = None) -> None:
        """End of training: each modifier removes its training-only machinery."""
        state = self._require_state()
        if model is not None and model is not state.model:
            raise SparseforgeError("finalize() was given a different model than modify()")
        if self._finalized:
            return
        for mod in self.modifiers:
            mod.finalize(state)
        self._finalized = True

    def apply_structure(self, model: torch.nn.Module) -> None:
        """Rebuild the structure the recipe leaves in a trained model (quantization, removed layers)
        so that a checkpoint saved after training loads into `model` with the same outputs."""
        for mod in self.modifiers:
            mod.apply_structure(model)

    # ----- checkpointing -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Schedule position and every modifier's state (masks, observers...), for exact resume."""
        state = self._require_state()
        return {
            "step": state.step,
            "steps_per_epoch": state.steps_per_epoch,
            "modifiers": [mod.state_dict() for mod in self.modifiers],
        }

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        """Continue a run from `state_dict()`; call after `modify()` on the resumed model."""
        state = self._require_state()
        if len(saved["modifiers"]) != len(self.modifiers):
            raise SparseforgeError(
                f"saved manager state has {len(saved['modifiers'])} modifiers, this recipe has {len(self.modifiers)}"
            )
        if int(saved["steps_per_epoch"]) != state.steps_per_epoch:
            logger.warning(
                "resuming with steps_per_epoch=%d where the run began with %d: epochs are rescaled",
                state.steps_per_epoch,
                saved["steps_per_epoch"],
            )
        state.step = int(saved["step"])
        self._updated_step = None
        for mod, mod_state in zip(self.modifiers, saved["modifiers"], strict=True):
            mod.load_state_dict(mod_state)

    # ----- reporting ---------------------------------------------------------------------------
    def logs(self) -> dict[str, float]:
        """Scalars the modifiers reported at the last update (learning rate, sparsity...)."""
        return dict(self.state.logs) if self.state else {}


class ScheduledModifierManager(Manager):
    """SparseML-compatible spelling: `ScheduledModifierManager.from_yaml(path, recipe_variables)`."""

    @classmethod
    def from_yaml(
        cls, file_path: Any, add_modifiers: Iterable[Modifier] | None = None, recipe_variables: Any = None
    ) -> ScheduledModifierManager:
        manager = cls(file_path, recipe_variables)
        if add_modifiers:
            manager.recipe.stages[-1].groups.setdefault("modifiers", []).extend(add_modifiers)
        return manager


class ScheduledOptimizer(torch.optim.Optimizer):
    """A torch optimizer whose `step()` runs the manager's schedule around the wrapped step.

    It does not own parameters or state: `param_groups`, `state`, `defaults`, `state_dict()` and
    `zero_grad()` are the wrapped optimizer's, so schedulers and grad scalers act on the real one.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, manager: Manager):  # noqa: D107
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
