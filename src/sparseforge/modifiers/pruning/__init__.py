"""Pruning modifiers: magnitude (GMP), constant (sparse transfer), movement, OBS (oBERT), layers,
and structured (heads, FFN neurons, layers removed for real: `structured.py`).

SparseGPT and Wanda prune one-shot from calibration inputs (`calibrated.py`). Every
mask-based modifier shares one mask creator (`masks.py`), one schedule (`schedule.py`) and
one enforcement of masks (`base.py`); each file adds only its scorer.
"""

from sparseforge.modifiers.pruning.base import GradualPruningModifier, PruningModifier
from sparseforge.modifiers.pruning.constant import ConstantPruningModifier
from sparseforge.modifiers.pruning.layer import LayerIdentity, LayerPruningModifier
from sparseforge.modifiers.pruning.magnitude import (
    GlobalMagnitudePruningModifier,
    GMPruningModifier,
    MagnitudePruningModifier,
)
from sparseforge.modifiers.pruning.masks import MaskStructure, create_masks, parse_mask_type
from sparseforge.modifiers.pruning.movement import MovementPruningModifier
from sparseforge.modifiers.pruning.obs import OBSPruningModifier
from sparseforge.modifiers.pruning.sparsegpt import SparseGPTModifier
from sparseforge.modifiers.pruning.sparseml_structured import (
    LayerThinningModifier,
    StructuredPruningModifier,
)
from sparseforge.modifiers.pruning.structured import GroupPruningModifier
from sparseforge.modifiers.pruning.wanda import WandaPruningModifier

__all__ = [
    "ConstantPruningModifier",
    "GMPruningModifier",
    "GlobalMagnitudePruningModifier",
    "GradualPruningModifier",
    "GroupPruningModifier",
    "LayerIdentity",
    "LayerPruningModifier",
    "LayerThinningModifier",
    "MagnitudePruningModifier",
    "MaskStructure",
    "MovementPruningModifier",
    "OBSPruningModifier",
    "PruningModifier",
    "StructuredPruningModifier",
    "SparseGPTModifier",
    "WandaPruningModifier",
    "create_masks",
    "parse_mask_type",
]
