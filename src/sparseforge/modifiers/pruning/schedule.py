"""Sparsity schedules: SparseML's interpolation between `init_sparsity` and `final_sparsity`.

With x = (epoch - start) / (end - start) clamped to [0, 1]:
    linear          y = x
    cubic           y = 1 - (1 - x)^3        (fast early pruning, gentle at the end: GMP's default)
    inverse_cubic   y = 1 - (1 - x)^(1/3)
and the value is init + y * (final - init). Cubic at x = 0.5 from 0 to 5 gives 4.375.
"""

from __future__ import annotations

import sys

INTERPOLATIONS = ("linear", "cubic", "inverse_cubic")


def check_inter_func(value: object) -> object:
    """The `inter_func` field validator of every gradual modifier: a name from INTERPOLATIONS."""
    if value not in INTERPOLATIONS:
        raise ValueError(f"unknown inter_func {value!r}; valid: {', '.join(INTERPOLATIONS)}")
    return value


def interpolate(
    x_cur: float, x0: float, x1: float, y0: float, y1: float, inter_func: str = "linear"
) -> float:
    """SparseML's `interpolate`, with x clamped to [x0, x1] (an end reached late stays at y1)."""
    if inter_func not in INTERPOLATIONS:
        raise ValueError(f"unknown inter_func {inter_func!r}; valid: {', '.join(INTERPOLATIONS)}")
    if x1 <= x0:
        return y1 if x_cur >= x0 else y0
    x = min(1.0, max(0.0, (x_cur - x0) / (x1 - x0)))
    if inter_func == "linear":
        y = x
    elif inter_func == "cubic":
        y = 1.0 - (1.0 - x) ** 3
    else:
        y = 1.0 - (1.0 - x) ** (1.0 / 3.0)
    if y <= sys.float_info.epsilon:
        return y0
    if y >= 1.0 - sys.float_info.epsilon:
        return y1
    return y0 + y * (y1 - y0)
