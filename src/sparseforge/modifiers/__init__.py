"""Modifiers: one module per family. Importing this package registers every `!Tag`."""

from sparseforge.modifiers import training  # noqa: F401 - registers the training modifiers
from sparseforge.modifiers import distillation  # noqa: F401
from sparseforge.modifiers import quantization  # noqa: F401
from sparseforge.modifiers import pruning  # noqa: F401
from sparseforge.modifiers.base import Modifier, TrainingState, UpdatingModifier

__all__ = ["Modifier", "TrainingState", "UpdatingModifier"]
