"""sparseforge: recipe-driven pruning, quantization-aware training and distillation for
transformer encoders, with a verified ONNX export. Runs SparseML recipes unmodified."""

from sparseforge import modifiers  # noqa: F401 - registers every modifier tag
from sparseforge import transformers as _hf  # noqa: F401 - registers the HF attention hook (lazy)
from sparseforge.errors import (
    DataError,
    ExportError,
    ModelMatchError,
    RecipeError,
    SparseforgeError,
)
from sparseforge.manager import Manager, ScheduledModifierManager, ScheduledOptimizer
from sparseforge.oneshot import OneShotResult, oneshot
from sparseforge.recipe import Recipe

__version__ = "0.1.0"

__all__ = [
    "DataError",
    "ExportError",
    "Manager",
    "ModelMatchError",
    "OneShotResult",
    "Recipe",
    "RecipeError",
    "ScheduledModifierManager",
    "ScheduledOptimizer",
    "SparseforgeError",
    "__version__",
    "oneshot",
]
