"""Keep masks over structural groups: one global ranking across layers, a minimum kept per layer.

`select_groups` is the structured counterpart of `masks.create_masks`: scores in, bool keep masks
out, nothing about models or schedules. Groups already pruned (`previous`) are pruned first, so a
rising gradual schedule never brings a group back; within each layer the `min_keep` best live
groups are never pruned, so a layer cannot lose every head or every neuron.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from sparseforge.modifiers.pruning.masks import lowest_k


def prunable_count(sizes: Sequence[int], min_keep: int) -> int:
    """How many groups may be pruned at most when every layer keeps `min_keep`."""
    return sum(max(0, size - min_keep) for size in sizes)


def target_count(target: float, sizes: Sequence[int], min_keep: int) -> int:
    """Groups to prune for sparsity `target` over all layers, capped by the per-layer minimum."""
    total = sum(sizes)
    return min(prunable_count(sizes, min_keep), max(0, round(target * total)))


def select_groups(
    scores: Sequence[torch.Tensor],
    num_pruned: int,
    min_keep: int = 1,
    previous: Sequence[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Keep masks (True = keep), one per layer, pruning the `num_pruned` lowest-scored groups
    over all layers together, each layer keeping at least `min_keep` of its groups."""
    ranked = []
    for index, values in enumerate(scores):
        values = torch.nan_to_num(values.detach().float().cpu().clone(), nan=-math.inf)
        if previous is not None:
            values[~previous[index].cpu()] = -math.inf
        keep_best = min(min_keep, values.numel())
        if keep_best > 0:
            best = torch.sort(values, descending=True, stable=True).indices[:keep_best]
            values[best] = math.inf
        ranked.append(values)
    flat = torch.cat(ranked) if ranked else torch.empty(0)
    protected = int(torch.isposinf(flat).sum())
    pruned = lowest_k(flat, min(num_pruned, flat.numel() - protected))
    masks, offset = [], 0
    for values in ranked:
        masks.append(~pruned[offset : offset + values.numel()])
        offset += values.numel()
    return masks
