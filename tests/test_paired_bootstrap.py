"""bench/paired_bootstrap.py: the interval every quality benchmark reports (the bench is not a
package; its helpers are tested here because BENCHMARKS.md's figures come from them)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
paired_bootstrap = pytest.importorskip("paired_bootstrap")


def test_entity_counts_sum_to_seqeval_f1():
    pytest.importorskip("seqeval")
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"], ["O"]]
    predicted = [["B-PER", "I-PER", "O", "B-ORG"], ["O", "B-ORG"], ["B-MISC"]]
    counts = paired_bootstrap.entity_counts(gold, predicted)
    # sentence 1: PER right, LOC predicted as ORG; sentence 2: ORG right; sentence 3: a false MISC
    assert counts.tolist() == [[1, 2, 2], [1, 1, 1], [0, 1, 0]]
    assert paired_bootstrap.micro_f1(counts.sum(0)) == pytest.approx(2 * 2 / (4 + 3))


def test_interval_is_paired_and_brackets_the_ratio():
    rng = np.random.default_rng(1)
    dense = (rng.random(500) < 0.9).astype(float)
    sparse = dense.copy()
    sparse[:25] = 0.0  # 25 sentences lost, none gained
    rows = {n: np.column_stack([v, np.ones_like(v)]) for n, v in (("d", dense), ("s", sparse))}
    weights = paired_bootstrap.resampling_weights(500, draws=400)
    assert weights.shape == (400, 500) and (weights.sum(1) == 500).all()
    low, high = paired_bootstrap.recovery_interval(
        rows["s"], rows["d"], weights, paired_bootstrap.accuracy_of
    )
    ratio = sparse.mean() / dense.mean()
    assert low < ratio < high < 1.0  # never above 1: every draw pairs the same sentences
    same = paired_bootstrap.recovery_interval(
        rows["d"], rows["d"], weights, paired_bootstrap.accuracy_of
    )
    assert same == (pytest.approx(1.0), pytest.approx(1.0))


def test_difference_interval_is_paired():
    rng = np.random.default_rng(2)
    base = (rng.random(400) < 0.85).astype(float)
    flipped = base.copy()
    flipped[np.flatnonzero(base == 1)[:6]] = 0.0  # 6 right answers lost
    flipped[np.flatnonzero(base == 0)[:6]] = 1.0  # and 6 others gained: same accuracy
    worse = base.copy()
    worse[np.flatnonzero(base == 1)[:20]] = 0.0  # 20 lost, none gained
    rows = {
        name: np.column_stack([v, np.ones_like(v)])
        for name, v in (("base", base), ("flipped", flipped), ("worse", worse))
    }
    weights = paired_bootstrap.resampling_weights(400, draws=500)
    score = paired_bootstrap.accuracy_of
    low, high = paired_bootstrap.difference_interval(rows["flipped"], rows["base"], weights, score)
    assert low < 0.0 < high  # equal accuracy: the interval of the difference contains 0
    assert high - low < 0.04  # paired: only the 12 changed sentences move it, not all 400
    low, high = paired_bootstrap.difference_interval(rows["base"], rows["worse"], weights, score)
    assert 0.0 < low < 20 / 400 < high  # every draw favours base: the interval excludes 0
    same = paired_bootstrap.difference_interval(rows["base"], rows["base"], weights, score)
    assert same == (0.0, 0.0)
