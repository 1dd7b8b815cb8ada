"""The Hugging Face layer: SparseTrainer, argument dataclasses, task CLIs, model loading.

Names are imported lazily so `import sparseforge.transformers` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SparseTrainer": "sparseforge.transformers.trainer",
    "load_model": "sparseforge.transformers.loading",
    "load_teacher": "sparseforge.transformers.trainer",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sparseforge.transformers' has no attribute '{name}'")
