"""SparseML's interpolation functions, including its reference values."""

from itertools import pairwise

import pytest

from sparseforge.modifiers.pruning.schedule import interpolate


def test_cubic_reference_value():
    assert interpolate(0.5, 0.0, 1.0, 0.0, 5.0, "cubic") == pytest.approx(4.375)


@pytest.mark.parametrize(
    "func, expected",
    [
        ("linear", 0.25),
        ("cubic", 1 - 0.75**3),
        ("inverse_cubic", 1 - 0.75 ** (1 / 3)),
    ],
)
def test_shapes_at_quarter(func, expected):
    assert interpolate(3.0, 2.0, 6.0, 0.0, 1.0, func) == pytest.approx(expected)


@pytest.mark.parametrize("func", ["linear", "cubic", "inverse_cubic"])
def test_ends_exact_clamped_and_rising(func):
    assert interpolate(2.0, 2.0, 6.0, 0.1, 0.9, func) == 0.1
    assert interpolate(6.0, 2.0, 6.0, 0.1, 0.9, func) == 0.9
    assert interpolate(1.0, 2.0, 6.0, 0.1, 0.9, func) == 0.1  # before start: clamped
    assert interpolate(7.5, 2.0, 6.0, 0.1, 0.9, func) == 0.9  # an end reached late stays final
    values = [interpolate(2 + i * 0.04, 2.0, 6.0, 0.1, 0.9, func) for i in range(101)]
    assert all(b > a for a, b in pairwise(values))


def test_degenerate_range_and_unknown_function():
    assert interpolate(3.0, 3.0, 3.0, 0.0, 0.8, "cubic") == 0.8
    assert interpolate(2.0, 3.0, 3.0, 0.0, 0.8, "cubic") == 0.0
    with pytest.raises(ValueError, match="inter_func"):
        interpolate(0.5, 0, 1, 0, 1, "quadratic")
