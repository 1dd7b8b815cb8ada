"""`load_model`: a trained sparseforge checkpoint back into a Hugging Face model, outputs identical.

The Hugging Face part only: the task's Auto class built from `config.json`. Rebuilding the
recipe's structure (QAT modules, removed layers) and the strict weight load are
`sparseforge.checkpoint`'s, which the export command uses directly, so what is exported is what
was trained.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from sparseforge.checkpoint import (
    RECIPE_FILE,
    load_state_dict,
    load_task_model,
    require_tokenizer_files,
)


def load_model(
    path: str | os.PathLike,
    task: str,
    *,
    recipe: str | os.PathLike | None = None,
    **config_kwargs: Any,
) -> torch.nn.Module:
    """Load the model saved at `path` for `task` (aliases allowed), recipe structure included.

    `recipe` defaults to `recipe.yaml` beside the weights; `config_kwargs` override config
    fields (e.g. `num_labels`). The model is returned in eval mode, on the CPU, in float32.
    """
    return load_task_model(path, task, recipe=recipe, **config_kwargs)


__all__ = ["RECIPE_FILE", "load_model", "load_state_dict", "require_tokenizer_files"]
