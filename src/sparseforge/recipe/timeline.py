"""`RunSchedule`: the one place where a recipe's step- and epoch-based bounds become run time.

A recipe names bounds in epochs (`start_epoch`, SparseML's unit) or in optimizer steps
(`start_step`); which one cannot be compared until the run's `steps_per_epoch` is known. The
`Manager` builds one `RunSchedule` when it binds a recipe to a model, and every modifier resolves
its bounds through it; `Recipe.end_epoch_at(steps_per_epoch)` uses the same object so that the
recipe, the Trainer and `sparseforge recipe check` agree on where a run ends.

Stages of a recipe file hold absolute epochs (SparseML's reading): the schedule adds no offset.
Only `compose_staged` moves a recipe after another, by rewriting its fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sparseforge.errors import RecipeError


@dataclass(frozen=True)
class RunSchedule:
    """Epoch <-> step conversion for one run; `steps_per_epoch` None until the run knows it."""

    steps_per_epoch: int | None = None

    def __post_init__(self) -> None:
        spe = self.steps_per_epoch
        if spe is not None and (isinstance(spe, bool) or not isinstance(spe, int) or spe < 1):
            raise RecipeError(f"steps_per_epoch must be a positive integer, got {spe!r}")

    def epoch_of_step(self, step: int) -> float:
        return step / self._spe("a step count")

    def step_of_epoch(self, epoch: float) -> int:
        """The optimizer step at which `epoch` begins (rounded to the nearest step)."""
        return round(epoch * self._spe("an epoch"))

    def resolve(self, epoch: float, step: int | None, owner: str = "", field: str = "") -> float:
        """A bound in run epochs: `step` when the recipe set one, else `epoch`; -1 stays -1."""
        if step is None:
            return epoch if epoch >= 0 else -1.0
        if step == -1:
            return -1.0
        return step / self._spe(f"{owner} {field}: {step}".strip())

    def _spe(self, what: str) -> int:
        if self.steps_per_epoch is None:
            raise RecipeError(
                f"{what} is counted in optimizer steps, so it needs steps_per_epoch to be placed "
                "in epochs (pass steps_per_epoch, e.g. `recipe check --steps_per_epoch N`, "
                "or Recipe.end_epoch_at(steps_per_epoch))"
            )
        return self.steps_per_epoch


def max_epochs_of(end_epoch: float) -> int:
    """SparseML's `max_epochs`: the ceiling of the latest bound (-1 when there is none)."""
    return math.ceil(end_epoch - 1e-9) if end_epoch >= 0 else -1
