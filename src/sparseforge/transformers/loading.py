"""`load_model`: a trained sparseforge checkpoint back into a model with identical outputs.

A QAT checkpoint holds fake-quant scales that a plain `from_pretrained` has no modules for, and
a layer-dropped one has fewer layers than its config builds: SparseML issue #437. The cure is
the order: build the task's model from `config.json`, rebuild what the saved `recipe.yaml` left
in the model (`modifier.apply_structure`), then load the weights strictly from safetensors.
The export command uses this loader, so what is exported is what was trained.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from sparseforge.errors import ModelMatchError, SparseforgeError
from sparseforge.tasks import AUTO_MODEL_CLASSES, normalize_task

logger = logging.getLogger(__name__)

RECIPE_FILE = "recipe.yaml"
_QUANT_KEY = "_fake_quant."


def checkpoint_files(path: Path) -> list[Path]:
    """The weight files of a Hugging Face folder: safetensors (single or sharded), else a torch .bin."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.is_file():
            shards = sorted(
                set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
            )
            return [path / shard for shard in shards]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return [path / name]
    raise SparseforgeError(
        f"{path}: no model.safetensors (or pytorch_model.bin) found; is this a saved model folder?"
    )


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All weights of the folder at `path` (safetensors, or torch.load with weights_only=True)."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for file in checkpoint_files(path):
        if file.suffix == ".safetensors":
            state.update(load_file(str(file)))
        else:
            state.update(torch.load(str(file), map_location="cpu", weights_only=True))
    return state


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
    import transformers

    from sparseforge.manager import Manager
    from sparseforge.modifiers.quantization import QuantizationModifier

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise SparseforgeError(
            f"{folder}: no config.json; --model_path must be a saved Hugging Face model folder"
        )
    task = normalize_task(task)
    _refuse_compressed_tensors(folder)
    config = transformers.AutoConfig.from_pretrained(str(folder), **config_kwargs)
    auto_class = getattr(transformers, AUTO_MODEL_CLASSES[task])
    model = auto_class.from_config(config)
    state = load_state_dict(folder)

    recipe_path = Path(recipe) if recipe is not None else folder / RECIPE_FILE
    if recipe is not None and not recipe_path.is_file():
        raise SparseforgeError(f"recipe not found: {recipe_path}")
    if recipe_path.is_file():
        manager = Manager(recipe_path)
        has_quant_state = any(_QUANT_KEY in key for key in state)
        for mod in manager.modifiers:
            if isinstance(mod, QuantizationModifier) and not has_quant_state:
                # Saved before the recipe's QAT started: the weights are still plain float.
                logger.info(
                    "%s: checkpoint has no quantization state; QAT structure not applied", folder
                )
                continue
            mod.apply_structure(model)
    elif any(_QUANT_KEY in key for key in state):
        raise ModelMatchError(
            f"{folder}: the checkpoint holds quantization scales (e.g. "
            f"{next(k for k in state if _QUANT_KEY in k)}) but there is no {RECIPE_FILE} beside it "
            "to rebuild the QAT modules; pass recipe=... (--recipe) with the training recipe"
        )

    _load_strict(model, state, folder)
    return model.eval()


def _refuse_compressed_tensors(folder: Path) -> None:
    """A folder written with --save_compressed is for transformers + compressed-tensors."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if (config.get("quantization_config") or {}).get("quant_method") == "compressed-tensors":
        raise ModelMatchError(
            f"{folder} is saved in the compressed-tensors format (--save_compressed): load it with "
            "transformers' from_pretrained (compressed-tensors installed); for a folder sparseforge "
            "reloads and exports, run oneshot / training without --save_compressed"
        )


def _load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], folder: Path) -> None:
    """load_state_dict that tolerates only keys of weights tied to a loaded one (e.g. MLM decoder)."""
    result = model.load_state_dict(state, strict=False)
    loaded_ids = {
        id(p) for name, p in model.named_parameters(remove_duplicate=False) if name in state
    }
    all_tensors = dict(model.named_parameters(remove_duplicate=False))
    missing = [
        key
        for key in result.missing_keys
        if not (key in all_tensors and id(all_tensors[key]) in loaded_ids)
    ]
    problems = []
    if missing:
        problems.append(
            f"missing from the checkpoint: {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}"
        )
    if result.unexpected_keys:
        keys = result.unexpected_keys
        problems.append(f"not in the model: {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}")
    if problems:
        raise ModelMatchError(
            f"{folder}: the weights do not fit the model built from config.json + {RECIPE_FILE} ("
            + "; ".join(problems)
            + "); was the model saved with a different recipe?"
        )
