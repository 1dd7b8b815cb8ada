"""The registry of recipe tags: `!Name` -> modifier class.

It lives in `recipe/` so that recipes can be built without this package importing the modifiers'
torch code; each modifier module registers its classes with `@register` when it is imported
(`import sparseforge` imports them all).
"""

from __future__ import annotations

import difflib
from typing import Any

from sparseforge.errors import RecipeError

_REGISTRY: dict[str, type[Any]] = {}

# Every modifier name SparseML registered for PyTorch, so a recipe using one we have not built yet
# gets "not implemented in sparseforge" rather than "unknown modifier".
SPARSEML_MODIFIER_NAMES = frozenset(
    {
        "EpochRangeModifier",
        "SetLearningRateModifier",
        "LearningRateFunctionModifier",
        "LearningRateModifier",
        "SetWeightDecayModifier",
        "TrainableParamsModifier",
        "PythonLoggerModifier",
        "ConstantPruningModifier",
        "GMPruningModifier",
        "MagnitudePruningModifier",
        "GlobalMagnitudePruningModifier",
        "MovementPruningModifier",
        "OBSPruningModifier",
        "LayerPruningModifier",
        "MFACPruningModifier",
        "MFACGlobalPruningModifier",
        "ACDCPruningModifier",
        "RigLPruningModifier",
        "TopKASTPruningModifier",
        "StructuredPruningModifier",
        "LayerThinningModifier",
        "ThinningModifier",
        "PowerpropagationModifier",
        "SPDYPruningModifier",
        "SPDYOBSPruningModifier",
        "OBCPruningModifier",
        "AdaptiveSparsityModifier",
        "QuantizationModifier",
        "LegacyQuantizationModifier",
        "DistillationModifier",
        "PerLayerDistillationModifier",
        "SparseGPTModifier",
        "SmoothQuantModifier",
        "LogarithmicEquivalenceModifier",
        # llm-compressor's one-shot names
        "WandaPruningModifier",
        "GPTQModifier",
    }
)


def register(cls: type[Any]) -> type[Any]:
    """Class decorator: make `cls` loadable from recipes as `!ClassName` (or `cls.tag`)."""
    _REGISTRY[cls.tag or cls.__name__] = cls
    return cls


def modifier_class(name: str) -> type[Any]:
    """The class registered for a recipe tag; a clear RecipeError for unknown or unbuilt names."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in SPARSEML_MODIFIER_NAMES:
        raise RecipeError(
            "this SparseML modifier is not implemented in sparseforge yet; "
            f"implemented: {', '.join(sorted(_REGISTRY))}",
            modifier=name,
        )
    candidates = list(_REGISTRY) + sorted(
        SPARSEML_MODIFIER_NAMES - set(_REGISTRY)
    )  # each name once
    near = difflib.get_close_matches(name, candidates, n=3)
    hint = f"; did you mean {' or '.join(near)}?" if near else ""
    raise RecipeError(f"unknown modifier !{name}{hint}", modifier=name)
