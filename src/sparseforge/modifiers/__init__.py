"""Modifiers: one module per family. Importing this package registers every `!Tag`."""

from sparseforge.modifiers import training  # noqa: F401 - registers the training modifiers
from sparseforge.modifiers.base import Modifier, TrainingState, UpdatingModifier

__all__ = ["Modifier", "TrainingState", "UpdatingModifier"]
