"""A recipe's schedule as a table: learning rate, sparsity targets and events per epoch.

Used by `sparseforge recipe check` so a user sees what a recipe will do before training for hours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sparseforge.modifiers.base import TrainingState
from sparseforge.recipe import Recipe
from sparseforge.recipe.timeline import RunSchedule


@dataclass
class ScheduleRow:
    epoch: float
    learning_rate: float | None
    values: dict[str, float]
    events: list[str]


def schedule_table(
    recipe: Recipe, steps_per_epoch: int = 100, base_lr: float | None = None, samples: int = 0
) -> list[ScheduleRow]:
    """One row per whole epoch (and per event epoch) from 0 to the recipe's end (`end_epoch`).

    The learning rate is simulated by running the recipe's LR modifiers over every step on a
    stand-in optimizer; other modifiers contribute `schedule_values()` and `schedule_events()`.
    `samples` > 0 adds that many evenly spaced rows and one row a step before each event, so a
    drawing shows curves (cubic sparsity) and jumps (an LR reset) on a recipe of few epochs.
    """
    end_epoch = max(recipe.end_epoch_at(steps_per_epoch), 0.0)
    # The recipe's own instances, bound to one schedule: a recipe is data and is never bound.
    run = RunSchedule(steps_per_epoch)
    modifiers = recipe.instantiate()
    events: dict[float, list[str]] = {}
    for mod in modifiers:
        mod.bind_schedule(run)
        for epoch, text in mod.schedule_events():
            events.setdefault(round(max(epoch, 0.0), 4), []).append(text)
    whole_epochs = {float(e) for e in range(math.floor(end_epoch + 1e-9) + 1)}
    epochs = sorted(whole_epochs | {round(end_epoch, 4)} | set(events))
    if samples > 0:
        step = 1.0 / steps_per_epoch
        dense = {end_epoch * i / samples for i in range(samples + 1)}
        before = {epoch - step for epoch in events if epoch - step > 0}
        epochs = sorted(set(epochs) | dense | before)

    lr_mods = [mod for mod in modifiers if type(mod).controls_learning_rate]
    dummy = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([dummy], lr=base_lr if base_lr is not None else 0.0)
    state = TrainingState(
        model=torch.nn.Module(), optimizer=optimizer, steps_per_epoch=steps_per_epoch
    )
    for mod in lr_mods:
        mod.initialize(state)
    lr_mods.sort(key=lambda mod: mod.scheduled_start)
    lr_at_step: dict[int, float] = {}
    wanted_steps = {math.floor(e * steps_per_epoch) for e in epochs}
    for step in range(max(wanted_steps, default=0) + 1):
        state.step = step
        for mod in lr_mods:
            mod.update(state)
        if step in wanted_steps:
            lr_at_step[step] = optimizer.param_groups[0]["lr"]

    rows = []
    for epoch in epochs:
        values: dict[str, float] = {}
        for mod in modifiers:
            values.update(mod.schedule_values(epoch))
        lr = lr_at_step.get(math.floor(epoch * steps_per_epoch)) if lr_mods else None
        rows.append(ScheduleRow(epoch, lr, values, events.get(round(epoch, 4), [])))
    return rows


def describe_recipe(recipe: Recipe, label: str, steps_per_epoch: int) -> str:
    """What `sparseforge recipe check` prints above the table: the end, each stage's span in
    absolute epochs with its resolved variables, and every modifier's fields."""
    end = recipe.end_epoch_at(steps_per_epoch)
    max_epochs = recipe.max_epochs_at(steps_per_epoch)
    ends = f" (ends at epoch {end:g})" if end != max_epochs else ""
    unit = f" with steps_per_epoch={steps_per_epoch}" if recipe.uses_steps else ""
    lines = [
        f"{label}: valid recipe, {len(recipe.modifiers)} modifier(s), max_epochs {max_epochs}{ends}{unit}"
    ]
    if any(stage.name for stage in recipe.stages):
        lines.append(
            "stages hold absolute epochs (as in SparseML); compose_staged is what moves a recipe after another"
        )
    for stage in recipe.stages:
        if stage.name:
            start, stop = stage.span(steps_per_epoch)
            lines.append(f"stage {stage.name}: epochs {max(start, 0.0):g} -> {max(stop, 0.0):g}")
            if stage.variables:
                resolved = ", ".join(f"{k}={v!r}" for k, v in stage.variables.items())
                lines.append(f"  variables: {resolved}")
        for group, mods in stage.groups.items():
            lines.append(f"  {group}:")
            for mod in mods:
                fields = ", ".join(f"{k}={v!r}" for k, v in mod.recipe_fields().items())
                lines.append(f"    {mod.name}({fields})")
    return "\n".join(lines)


def format_schedule(rows: list[ScheduleRow]) -> str:
    value_keys = sorted({key for row in rows for key in row.values})
    header = ["epoch", "lr"] + value_keys + ["events"]
    lines = []
    for row in rows:
        cells = [f"{row.epoch:g}", "-" if row.learning_rate is None else f"{row.learning_rate:.3g}"]
        cells += [f"{row.values[key]:.4g}" if key in row.values else "-" for key in value_keys]
        cells.append("; ".join(row.events))
        lines.append(cells)
    widths = [
        max(len(header[i]), *(len(line[i]) for line in lines)) for i in range(len(header) - 1)
    ]
    out = [
        "  ".join(h.ljust(w) for h, w in zip(header[:-1], widths, strict=True)) + "  " + header[-1]
    ]
    for line in lines:
        out.append(
            "  ".join(c.ljust(w) for c, w in zip(line[:-1], widths, strict=True)) + "  " + line[-1]
        )
    return "\n".join(out)
