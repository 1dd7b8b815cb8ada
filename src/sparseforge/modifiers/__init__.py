"""Modifiers: one module per family. Importing this package registers every `!Tag`."""

from sparseforge.modifiers import (
    distillation,  # noqa: F401
    params,  # noqa: F401 - SetParam, GradualParam, SparsificationLogging
    pruning,  # noqa: F401
    quantization,  # noqa: F401
    training,  # noqa: F401 - registers the training modifiers
)
from sparseforge.modifiers.base import Modifier, TrainingState, UpdatingModifier

__all__ = ["Modifier", "TrainingState", "UpdatingModifier"]
