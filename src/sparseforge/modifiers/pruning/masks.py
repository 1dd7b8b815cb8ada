"""The one mask creator every pruning scorer shares (magnitude, movement, OBS, constant).

A mask is a bool tensor shaped like its parameter: True = keep, False = pruned. Scores are
"higher = more important"; the lowest-scored groups are pruned. Structures (SparseML's names):

- `unstructured`: single weights; exactly `round(s * numel)` pruned.
- blocks `[a, b]` (and `block4` = `[1, 4]`): `a` consecutive output rows x `b` consecutive input
  columns, scored by the mean of their element scores (mean |w| for magnitude); exactly
  `round(s * num_blocks)` blocks pruned. Edge blocks that do not fill a whole block are scored by
  the mean of the elements they have (SparseML pads `block4` with that mean: the same ranking).
- `filter` / `channel`: whole output rows (dim 0: a Linear's output feature, a Conv's filter) or
  whole input columns (dim 1), scored by the mean of their element scores, as SparseML's
  `DimensionSparsityMaskCreator`; exactly `round(s * rows)` (or columns) pruned. A 1-D
  parameter (a bias) has no such dimension: its elements are the groups.
- `N:M` (e.g. `2:4`): at most N of every M consecutive input weights kept. Below the N:M sparsity
  (1 - N/M) the lowest-scored of each group's M-N candidates are pruned first, so a gradual
  schedule ends exactly on the N:M pattern.

Ties are broken by position (the earlier element is pruned first), so masks are deterministic.
Groups pruned in `previous` masks rank below every live group: a gradual schedule never brings a
pruned weight back while its sparsity rises.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

MASK_TYPE_HELP = (
    "'unstructured', 'filter', 'channel', 'block4', a block shape like [1, 4], or 'N:M' like '2:4'"
)
# The dimension whose slices are the groups of a dimension structure.
_GROUP_DIM = {"filter": 0, "channel": 1}
# SparseML's N:M tolerance: a target within this of 1 - N/M means "the full N:M pattern".
NM_TOLERANCE = 1e-2


@dataclass(frozen=True)
class MaskStructure:
    """A parsed `mask_type`: unstructured, rectangular blocks, or N:M."""

    kind: str  # "unstructured" | "block" | "nm" | "filter" | "channel"
    block: tuple[int, int] = (1, 1)
    n: int = 0
    m: int = 0

    @property
    def nm_sparsity(self) -> float:
        return 1.0 - self.n / self.m if self.kind == "nm" else 1.0

    def describe(self) -> str:
        if self.kind == "block":
            return f"[{self.block[0]},{self.block[1]}] blocks"
        if self.kind == "nm":
            return f"{self.n}:{self.m}"
        return self.kind


UNSTRUCTURED = MaskStructure("unstructured")


def parse_mask_type(value: Any) -> MaskStructure:
    """`mask_type` as recipes write it -> MaskStructure; ValueError naming the valid forms."""
    if isinstance(value, MaskStructure):
        return value
    if isinstance(value, str):
        structure = _parse_mask_text(value)
        if structure is not None:
            return structure
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return _parse_block_shape(value)
    raise ValueError(f"unknown mask_type {value!r}; valid: {MASK_TYPE_HELP}")


def _parse_mask_text(value: str) -> MaskStructure | None:
    """A mask_type written as text (a name, `N:M` or `[rows,columns]`); None when unrecognized."""
    text = value.strip().lower()
    if text == "unstructured":
        return UNSTRUCTURED
    if text in _GROUP_DIM:
        return MaskStructure(text)
    if text in ("block4", "block"):  # "block" is SparseML's older spelling of block4
        return MaskStructure("block", (1, 4))
    if text == "tensorrt":
        return MaskStructure("nm", n=2, m=4)
    if ":" in text:
        parts = text.split(":")
        if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
            n, m = int(parts[0]), int(parts[1])
            if 0 < n < m:
                return MaskStructure("nm", n=n, m=m)
        raise ValueError(
            f"N:M mask_type needs integers 0 < N < M (N kept of every M), got {value!r}"
        )
    if text.startswith("[") and text.endswith("]"):
        items = [p.strip() for p in text[1:-1].split(",")]
        if all(p.isdigit() for p in items):
            return parse_mask_type([int(p) for p in items])
    return None


def _parse_block_shape(value: Sequence) -> MaskStructure:
    """A block mask_type given as a list [rows, columns]; [1, 1] is unstructured."""
    items = list(value)
    if len(items) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in items
    ):
        a, b = items
        return UNSTRUCTURED if (a, b) == (1, 1) else MaskStructure("block", (a, b))
    raise ValueError(f"a block mask_type is two positive integers [rows, columns], got {value!r}")


# ----- grouping ----------------------------------------------------------------------------------
def _as_matrix(tensor: torch.Tensor) -> torch.Tensor:
    """View a weight as (out, spatial, in): input channels last, as SparseML's block4 permutes."""
    if tensor.dim() == 0:
        return tensor.reshape(1, 1, 1)
    if tensor.dim() == 1:
        return tensor.reshape(1, 1, -1)
    moved = tensor.movedim(1, -1)
    return moved.reshape(moved.shape[0], -1, moved.shape[-1])


def _from_matrix(matrix: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if len(shape) <= 1:
        return matrix.reshape(shape)
    moved_shape = (shape[0], *shape[2:], shape[1])
    return matrix.reshape(moved_shape).movedim(-1, 1)


def group_scores(scores: torch.Tensor, structure: MaskStructure) -> torch.Tensor:
    """One score per group (a 1-D tensor in a fixed group order): element, block mean."""
    scores = scores.detach().float()
    if structure.kind in _GROUP_DIM and scores.dim() >= 2:
        dim = _GROUP_DIM[structure.kind]
        return scores.movedim(dim, 0).reshape(scores.shape[dim], -1).mean(dim=1)
    if structure.kind != "block":
        return scores.reshape(-1)
    a, b = structure.block
    mat = _as_matrix(scores)  # (out, k, in)
    out, k, inp = mat.shape
    pad_out, pad_in = -out % a, -inp % b
    if not (pad_out or pad_in):  # whole blocks: a plain mean (a -inf element makes the block -inf)
        return mat.reshape(out // a, a, k, inp // b, b).mean(dim=(1, 4)).reshape(-1)
    ones = torch.ones_like(mat)
    if pad_out or pad_in:
        mat = torch.nn.functional.pad(mat, (0, pad_in, 0, 0, 0, pad_out))
        ones = torch.nn.functional.pad(ones, (0, pad_in, 0, 0, 0, pad_out))

    def block_sum(t: torch.Tensor) -> torch.Tensor:
        t = t.reshape((out + pad_out) // a, a, k, (inp + pad_in) // b, b)
        return t.sum(dim=(1, 4))  # (out/a, k, in/b)

    # -inf scores (groups forced first) would make sums NaN with padding zeros: handle apart.
    forced = torch.isneginf(mat)
    totals = block_sum(torch.where(forced, torch.zeros_like(mat), mat))
    means = totals / block_sum(ones)
    means[block_sum(forced.float()) > 0] = -math.inf
    return means.reshape(-1)


def expand_groups(
    group_values: torch.Tensor, shape: torch.Size, structure: MaskStructure
) -> torch.Tensor:
    """Inverse of `group_scores` for a per-group tensor (e.g. a keep mask)."""
    if structure.kind in _GROUP_DIM and len(shape) >= 2:
        view = [1] * len(shape)
        view[_GROUP_DIM[structure.kind]] = -1
        return group_values.reshape(view).expand(shape).contiguous()
    if structure.kind != "block":
        return group_values.reshape(shape)
    a, b = structure.block
    template = _as_matrix(torch.empty(shape, device="meta"))
    out, k, inp = template.shape
    grouped = group_values.reshape(-(-out // a), k, -(-inp // b))
    full = grouped.repeat_interleave(a, dim=0).repeat_interleave(b, dim=2)[:out, :, :inp]
    return _from_matrix(full.contiguous(), shape)


def group_count(shape: torch.Size, structure: MaskStructure) -> int:
    if structure.kind in _GROUP_DIM and len(shape) >= 2:
        return shape[_GROUP_DIM[structure.kind]]
    if structure.kind != "block":
        return math.prod(shape)
    out, k, inp = _as_matrix(torch.empty(shape, device="meta")).shape
    a, b = structure.block
    return -(-out // a) * k * -(-inp // b)


def check_shape(shape: torch.Size, structure: MaskStructure) -> str | None:
    """Why `structure` cannot apply to a parameter of `shape`, or None if it can."""
    if structure.kind == "nm":
        inp = _as_matrix(torch.empty(shape, device="meta")).shape[-1]
        if inp % structure.m:
            return f"{structure.describe()} needs the input dimension ({inp}) to be a multiple of {structure.m}"
    return None


# ----- selection ---------------------------------------------------------------------------------
def lowest_k(values: torch.Tensor, k: int) -> torch.Tensor:
    """Bool tensor marking exactly the `k` lowest of 1-D `values`; ties go to the earlier index."""
    n = values.numel()
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=values.device)
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=values.device)
    values = torch.nan_to_num(
        values.reshape(-1), nan=math.inf
    )  # a NaN score never outranks a number
    threshold = torch.kthvalue(values, k).values
    below = values < threshold
    need = k - int(below.sum())
    ties = values == threshold
    return below | (ties & (torch.cumsum(ties, 0) <= need))


def _count(target: float, total: int) -> int:
    return min(total, max(0, round(target * total)))


def _nm_keep_mask(scores: torch.Tensor, target: float, structure: MaskStructure) -> torch.Tensor:
    mat = _as_matrix(scores.detach().float())
    groups = mat.reshape(-1, structure.m)
    order = torch.sort(groups, dim=1, stable=True).indices
    drop = structure.m - structure.n
    candidate = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, order[:, :drop], True)
    if abs(target - structure.nm_sparsity) <= NM_TOLERANCE:
        pruned = candidate
    else:
        k = _count(min(target, structure.nm_sparsity), groups.numel())
        ranked = torch.where(candidate, groups, torch.full_like(groups, math.inf))
        pruned = lowest_k(ranked.reshape(-1), k).reshape(groups.shape) & candidate
    return _from_matrix((~pruned).reshape(mat.shape), scores.shape)


def create_masks(
    scores: Mapping[str, torch.Tensor],
    targets: Mapping[str, float],
    structure: MaskStructure | Any = UNSTRUCTURED,
    global_sparsity: bool = False,
    previous: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Keep masks (True = keep) for each named score tensor at its target sparsity.

    With `global_sparsity` one threshold ranks every tensor's groups together and the (single)
    target is met over all of them. Groups fully pruned in `previous` are pruned first.
    """
    structure = parse_mask_type(structure)
    previous = previous or {}
    grouped: dict[str, torch.Tensor] = {}
    for name, score in scores.items():
        if structure.kind == "nm":
            continue
        values = group_scores(score, structure)
        prev = previous.get(name)
        if prev is not None:
            prev_pruned = (
                group_scores((~prev).float(), structure) >= 1.0
            )  # the whole group was pruned
            values = torch.where(prev_pruned, torch.full_like(values, -math.inf), values)
        grouped[name] = values

    masks: dict[str, torch.Tensor] = {}
    if structure.kind == "nm":
        for name, score in scores.items():
            score = score.detach().float()
            prev = previous.get(name)
            if prev is not None:
                score = torch.where(prev, score, torch.full_like(score, -math.inf))
            masks[name] = _nm_keep_mask(score, float(targets[name]), structure)
        return masks
    if global_sparsity and grouped:
        distinct = {round(float(targets[name]), 12) for name in grouped}
        if len(distinct) != 1:
            raise ValueError(
                f"global sparsity needs one target for all parameters, got {sorted(distinct)}"
            )
        allv = torch.cat([v.to(torch.float32).cpu() for v in grouped.values()])
        pruned_all = lowest_k(allv, _count(next(iter(distinct)), allv.numel()))
        offset = 0
        for name, values in grouped.items():
            pruned = pruned_all[offset : offset + values.numel()].to(values.device)
            offset += values.numel()
            masks[name] = expand_groups(~pruned, scores[name].shape, structure)
        return masks
    for name, values in grouped.items():
        pruned = lowest_k(values, _count(float(targets[name]), values.numel()))
        masks[name] = expand_groups(~pruned, scores[name].shape, structure)
    return masks
