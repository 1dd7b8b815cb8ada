"""A picture of a recipe's schedule: `sparseforge recipe check RECIPE --plot schedule.png`.

Draws what `schedule_table` computes (learning rate, sparsity targets, events such as QAT start,
observer freeze and distillation) so a user sees a recipe's shape over its epochs at a glance;
with a training run's `trainer_state.json` it overlays what was measured (logged learning rate
and sparsity) on the targets. matplotlib is an optional extra (`pip install sparseforge[plot]`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from sparseforge.errors import DataError, SparseforgeError
from sparseforge.schedule import ScheduleRow

# Logged keys (SparseTrainer's log history) drawn as measured curves beside the targets.
MEASURED_LR = "learning_rate"
MEASURED_SPARSITY = "sparsity/total"


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as err:
        raise SparseforgeError(
            "--plot needs matplotlib, an optional extra: pip install 'sparseforge[plot]' "
            "(or pip install matplotlib)"
        ) from err
    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    return plt


def read_log_history(path: str | os.PathLike) -> dict[str, list[tuple[float, float]]]:
    """(epoch, value) series of the learning rate and total sparsity a training run logged.

    `path` is a `trainer_state.json` or the folder (output dir or checkpoint) that holds one.
    """
    file = Path(path)
    if file.is_dir():
        file = file / "trainer_state.json"
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise DataError(
            f"no trainer_state.json at {file}: pass a training output folder or the file"
        ) from err
    except (OSError, ValueError) as err:
        raise DataError(f"{file}: not a readable trainer_state.json ({err})") from err
    history = state.get("log_history") if isinstance(state, dict) else None
    if not isinstance(history, list):
        raise DataError(
            f"{file}: has no 'log_history' list (is it a Trainer's trainer_state.json?)"
        )
    series: dict[str, list[tuple[float, float]]] = {MEASURED_LR: [], MEASURED_SPARSITY: []}
    for entry in history:
        if not isinstance(entry, dict) or not isinstance(entry.get("epoch"), (int, float)):
            continue
        for key, points in series.items():
            value = entry.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                points.append((float(entry["epoch"]), float(value)))
    return series


def plot_schedule(
    rows: list[ScheduleRow],
    path: str | os.PathLike,
    *,
    title: str = "",
    measured: dict[str, list[tuple[float, float]]] | None = None,
) -> Path:
    """Write a PNG of the schedule `rows` (and measured series) to `path`; returns the path."""
    plt = _pyplot()
    fig = draw_schedule(rows, title=title, measured=measured)
    out = Path(path)
    tmp = out.with_name(out.name + ".tmp.png")
    try:
        fig.savefig(tmp, dpi=110)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise SparseforgeError(f"cannot write the plot to {out}: {err.strerror or err}") from err
    finally:
        plt.close(fig)
    os.replace(tmp, out)  # a plot appears only once complete
    return out


def draw_schedule(
    rows: list[ScheduleRow],
    *,
    title: str = "",
    measured: dict[str, list[tuple[float, float]]] | None = None,
) -> Any:
    """The matplotlib Figure: learning rate above, sparsity targets (and measured) below."""
    if not rows:
        raise SparseforgeError("the recipe's schedule is empty: nothing to plot")
    plt = _pyplot()
    epochs = [row.epoch for row in rows]
    event_rows = [row for row in rows if row.events]
    fig, (lr_axis, sparsity_axis) = plt.subplots(
        2, 1, sharex=True, figsize=(10, 6.0 + 0.125 * sum(len(row.events) for row in event_rows))
    )
    lrs = [(row.epoch, row.learning_rate) for row in rows if row.learning_rate is not None]
    if lrs:
        lr_axis.plot(*zip(*lrs, strict=True), label="learning rate (recipe)")
    _plot_measured(lr_axis, measured, MEASURED_LR, "learning rate (logged)")
    lr_axis.set_ylabel("learning rate")
    for key in sorted({key for row in rows for key in row.values}):
        points = [(row.epoch, row.values[key]) for row in rows if key in row.values]
        sparsity_axis.plot(*zip(*points, strict=True), label=f"{key} target")
    _plot_measured(sparsity_axis, measured, MEASURED_SPARSITY, "sparsity (measured, all pruned)")
    sparsity_axis.set_ylabel("sparsity")
    sparsity_axis.set_ylim(-0.02, 1.02)
    sparsity_axis.set_xlabel("epoch")
    legend = _mark_events(event_rows, (lr_axis, sparsity_axis))
    for axis in (lr_axis, sparsity_axis):
        axis.set_xlim(min(epochs), max(max(epochs), 1e-9))
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(loc="best", fontsize="small")
    if title:
        fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    if legend:
        # room below the x axis for one 7-point line per event (inches -> figure fraction)
        fig.subplots_adjust(bottom=(0.125 * len(legend) + 0.6) / fig.get_figheight())
        fig.text(0.01, 0.01, "\n".join(legend), fontsize=7, family="monospace", va="bottom")
    return fig


def _plot_measured(axis: Any, measured: dict | None, key: str, label: str) -> None:
    points = (measured or {}).get(key) or []
    if points:
        axis.plot(*zip(*points, strict=True), ".", markersize=3, alpha=0.7, label=label)


def _mark_events(event_rows: list[ScheduleRow], axes: tuple[Any, Any]) -> list[str]:
    """A numbered dashed line at each event epoch; returns the legend lines ("[n] epoch e: ...")."""
    legend = []
    for number, row in enumerate(event_rows, start=1):
        for axis in axes:
            axis.axvline(row.epoch, color="grey", linestyle="--", linewidth=0.8, alpha=0.6)
        axes[0].annotate(
            f"[{number}]",
            xy=(row.epoch, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, 2),
            textcoords="offset points",
            fontsize=7,
            ha="center",
            va="bottom",
            color="dimgrey",
        )
        legend.extend(
            f"[{number}] epoch {row.epoch:g}: {event}" if index == 0 else f"    {event}"
            for index, event in enumerate(row.events)
        )
    return legend
