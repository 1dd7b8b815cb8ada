"""Which parameters and modules a recipe's `params` / `submodules` / `ignore` entries name.

Exact names, `re:` patterns (Python `re.match` semantics, as SparseML), `__ALL__` and
`__ALL_PRUNABLE__`. A pattern that matches nothing is an error naming the pattern and some real
names: SparseML let such recipes train for hours with "sparsity 0 for all layers".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch

from sparseforge.errors import ModelMatchError

ALL = "__ALL__"
ALL_PRUNABLE = "__ALL_PRUNABLE__"
# transformers' GPT-2 style Conv1D is matched by name: modifiers do not import transformers.
_PRUNABLE_TYPES = (
    torch.nn.Linear,
    torch.nn.Embedding,
    torch.nn.Conv1d,
    torch.nn.Conv2d,
    torch.nn.Conv3d,
)
_PRUNABLE_TYPE_NAMES = {"Conv1D"}


def as_pattern_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


def name_matches(name: str, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.match(pattern[3:], name) is not None
    return name == pattern


def prunable_parameter_names(model: torch.nn.Module) -> list[str]:
    """Weights of Linear, Embedding, Conv and transformers' Conv1D modules, in model order."""
    names = []
    for module_name, module in model.named_modules():
        if isinstance(module, _PRUNABLE_TYPES) or type(module).__name__ in _PRUNABLE_TYPE_NAMES:
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.nn.Parameter):
                names.append(f"{module_name}.weight" if module_name else "weight")
    return names


def _no_match_error(
    pattern: str, kind: str, field: str, owner: str, candidates: Iterable[str]
) -> ModelMatchError:
    candidates = list(candidates)
    sample = ", ".join(candidates[:8]) + (", ..." if len(candidates) > 8 else "")
    hint = ""
    if not pattern.startswith("re:") and any(ch in pattern for ch in "*?[]()|"):
        hint = " (it looks like a regular expression: prefix it with 're:')"
    return ModelMatchError(
        f"{owner}: {field} entry '{pattern}' matches no {kind} of the model{hint}; "
        f"the model's {kind}s include: {sample}"
    )


def select_parameters(
    model: torch.nn.Module,
    patterns: str | Sequence[str],
    *,
    owner: str = "modifier",
    field: str = "params",
) -> dict[str, torch.nn.Parameter]:
    """Named parameters selected by `patterns`, in model order; each pattern must match."""
    params = dict(model.named_parameters())
    selected: set[str] = set()
    for pattern in as_pattern_list(patterns):
        if pattern == ALL:
            hits = list(params)
        elif pattern == ALL_PRUNABLE:
            hits = prunable_parameter_names(model)
        else:
            hits = [name for name in params if name_matches(name, pattern)]
        if not hits:
            candidates = prunable_parameter_names(model) or list(params)
            raise _no_match_error(pattern, "parameter", field, owner, candidates)
        selected.update(hits)
    return {name: param for name, param in params.items() if name in selected}


def select_modules(
    model: torch.nn.Module,
    patterns: str | Sequence[str],
    *,
    owner: str = "modifier",
    field: str = "submodules",
) -> dict[str, torch.nn.Module]:
    """Named submodules selected by `patterns` (exact names or `re:`); each pattern must match."""
    modules = dict(model.named_modules())
    selected: set[str] = set()
    for pattern in as_pattern_list(patterns):
        hits = [name for name in modules if name and name_matches(name, pattern)]
        if not hits:
            top_level = [name for name in modules if name and name.count(".") <= 1]
            raise _no_match_error(pattern, "module", field, owner, top_level)
        selected.update(hits)
    return {name: module for name, module in modules.items() if name in selected}
