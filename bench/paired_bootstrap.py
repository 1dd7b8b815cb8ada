"""The paired bootstrap every quality benchmark reports its recovery with, in one place.

A model is scored through per-unit statistics (a dev sentence, a question, a test sentence): one
row per unit whose column sums give the metric (`accuracy_of`: correct / units, also a mean F1
over questions; `micro_f1`: entity F1 from true-positive / predicted / gold counts). A draw picks
`units` units with replacement, the same draws for the dense and the compressed model (paired),
and the interval is the 2.5th-97.5th percentile of score(compressed) / score(dense) over draws:
the spread the evaluation set leaves in the ratio, not the spread between training seeds.
`difference_interval` pairs two compressed models the same way (the interval of their score
difference, e.g. sparseforge minus llm-compressor on the same configuration).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

DRAWS = 1000


def resampling_weights(units: int, draws: int = DRAWS, seed: int = 0) -> np.ndarray:
    """(draws, units): how often each unit is picked in each draw of `units` picks with
    replacement, so a draw's summed statistics are `weights @ stats`."""
    rng = np.random.default_rng(seed)
    return np.stack(
        [np.bincount(rng.integers(0, units, units), minlength=units) for _ in range(draws)]
    ).astype(np.float64)


def recovery_interval(
    stats: np.ndarray, dense_stats: np.ndarray, weights: np.ndarray, score: Callable
) -> tuple[float | None, float | None]:
    """2.5th and 97.5th percentiles of score(compressed) / score(dense) over paired draws (draws
    whose dense score is 0 are left out; None when all are)."""
    compressed, dense = score(weights @ stats), score(weights @ dense_stats)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = compressed / dense
    ratios = ratios[np.isfinite(ratios)]
    if not ratios.size:
        return None, None
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(low), float(high)


def accuracy_of(sums: np.ndarray) -> np.ndarray:
    """First column over second, over any leading draw axes: accuracy from (correct, 1) rows, a
    mean score from (score, 1) rows."""
    return sums[..., 0] / sums[..., 1]


def micro_f1(sums: np.ndarray) -> np.ndarray:
    """Micro F1 = 2 TP / (predicted + gold) from summed entity counts; 0 when there are none."""
    sums = np.asarray(sums, dtype=np.float64)
    denominator = sums[..., 1] + sums[..., 2]
    return np.divide(
        2 * sums[..., 0], denominator, out=np.zeros_like(denominator), where=denominator > 0
    )


def entity_counts(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> np.ndarray:
    """(true positives, predicted, gold) entities of every sentence (seqeval's get_entities, as its
    default-mode micro scores count them), checked against seqeval's own F1 over them all."""
    from seqeval.metrics import f1_score
    from seqeval.metrics.sequence_labeling import get_entities

    counts = []
    for true_tags, pred_tags in zip(gold, predicted, strict=True):
        true, pred = set(get_entities(list(true_tags))), set(get_entities(list(pred_tags)))
        counts.append([len(true & pred), len(pred), len(true)])
    counts = np.array(counts, dtype=np.int64).reshape(-1, 3)
    expected = f1_score([list(t) for t in gold], [list(p) for p in predicted], zero_division=0)
    if abs(float(micro_f1(counts.sum(0))) - expected) > 1e-9:
        raise RuntimeError(f"entity counts give F1 {micro_f1(counts.sum(0))}, seqeval {expected}")
    return counts


def difference_interval(
    stats: np.ndarray, other_stats: np.ndarray, weights: np.ndarray, score: Callable
) -> tuple[float, float]:
    """2.5th and 97.5th percentiles of score(stats) - score(other_stats) over paired draws: two
    compressed models scored on the same resampled units, so "equal" reads as "contains 0"."""
    differences = score(weights @ stats) - score(weights @ other_stats)
    low, high = np.percentile(differences, [2.5, 97.5])
    return float(low), float(high)
