"""The Hugging Face layer: SparseTrainer, argument dataclasses, task CLIs, model loading.

Names are imported lazily so `import sparseforge.transformers` stays cheap. Importing the
package registers the Hugging Face attention hook QAT uses (`attention.install`); `import
sparseforge` does that, so a Hugging Face model quantizes through the plain `Manager` too.
"""

from __future__ import annotations

import importlib
from typing import Any

from sparseforge.transformers.attention import install as _install_attention_hook

_EXPORTS = {
    "SparseTrainer": "sparseforge.transformers.trainer",
    "load_model": "sparseforge.transformers.loading",
    "load_teacher": "sparseforge.transformers.trainer",
}

__all__ = list(_EXPORTS)

_install_attention_hook()


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sparseforge.transformers' has no attribute '{name}'")
