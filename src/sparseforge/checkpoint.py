"""Model folders in and out: weight files, the saved recipe, structure rebuilt before a strict load.

A trained sparseforge model is not always the model its `config.json` builds: QAT adds fake-quant
modules (and their scales to the weights), layer pruning removes layers, structured pruning
shrinks them. A plain `from_pretrained` would drop those tensors or start new ones (SparseML
issue #437). The cure is the order, kept here in one place for every loader:

1. build the bare model (the caller's `build_model`, e.g. `hf_task_builder` for a task),
2. rebuild what the saved `recipe.yaml` left in it, through each modifier's generic
   `apply_structure(model)` (no modifier is special-cased here),
3. load the weights strictly from safetensors (or `torch.load(weights_only=True)`).

This module sits below both `sparseforge.transformers` and `sparseforge.export`: it imports the
manager and the modifiers, never the Hugging Face layer, so export loads a model folder without
the Trainer's package.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from sparseforge.errors import ModelMatchError, SparseforgeError

logger = logging.getLogger(__name__)

# The one name of the recipe a model folder was trained with (SparseML's name too).
RECIPE_FILE = "recipe.yaml"
CONFIG_FILE = "config.json"
_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# In a folder, in order of preference; Trainer checkpoints also hold optimizer.pt & co, which
# the first two patterns never reach when a model file exists.
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.bin", "*.pt", "*.pth")
_NOT_WEIGHTS = ("training_args", "optimizer", "scheduler", "rng_state", "manager_state")

BuildModel = Callable[[], torch.nn.Module]


@contextlib.contextmanager
def folder_written_aside(target: Path, replace_own: bool = False) -> Iterator[Path]:
    """A staging folder beside `target` to write a model folder into: on success it is renamed to
    `target`, on any error it is removed, so the folder exists only once complete.

    `target` must be absent or an empty folder (callers refuse anything else before working),
    unless `replace_own`: the caller has checked that an existing `target` is sparseforge's own
    earlier output, which is replaced only once the new folder is complete.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield staging
        if target.exists():
            if replace_own:
                shutil.rmtree(target)
            else:
                target.rmdir()  # empty: never a user's files
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def weight_files(path: str | os.PathLike) -> list[Path]:
    """The weight files of a checkpoint: the file itself, a folder's shards (from its index), or
    its safetensors (else `.bin`, `.pt`)."""
    path = Path(path)
    if path.is_file():
        if path.suffix not in _WEIGHT_SUFFIXES:
            raise SparseforgeError(
                f"{path}: not a weights file (expected {', '.join(_WEIGHT_SUFFIXES)})"
            )
        return [path]
    if not path.is_dir():
        raise SparseforgeError(f"{path}: no such model folder or checkpoint file")
    for index_name in _INDEX_FILES:
        index = path / index_name
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
            return [path / shard for shard in sorted(set(weight_map.values()))]
    for pattern in _WEIGHT_PATTERNS:
        files = sorted(
            p for p in path.glob(pattern) if p.is_file() and not p.name.startswith(_NOT_WEIGHTS)
        )
        if files:
            return files
    raise SparseforgeError(
        f"{path}: no weights found (looked for *.safetensors, pytorch_model*.bin); "
        "is this a saved model folder?"
    )


def load_state_dict(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint at `path`; never unpickles code."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for file in weight_files(path):
        if file.suffix == ".safetensors":
            try:
                state.update(load_file(str(file), device=device))
            except (SafetensorError, OSError) as err:
                raise SparseforgeError(
                    f"{file} is damaged (truncated or not safetensors: {str(err).splitlines()[0]})"
                ) from None
        else:
            state.update(torch.load(str(file), map_location=device, weights_only=True))
    return state


# A folder holds a tokenizer only with one of these: without them transformers 5 builds a tokenizer
# of the 5 special tokens alone (every word [UNK]) and nothing fails.
TOKENIZER_VOCAB_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def require_tokenizer_files(
    folder: str | os.PathLike,
    what: str,
    hint: str = "save the tokenizer with the model (tokenizer.save_pretrained)",
) -> None:
    """Refuse a model folder without tokenizer vocabulary files (`what` names the flag or role)."""
    if not any((Path(folder) / name).is_file() for name in TOKENIZER_VOCAB_FILES):
        raise SparseforgeError(
            f"{what} {folder} has no tokenizer: none of {', '.join(TOKENIZER_VOCAB_FILES)} is there (a tokenizer "
            f"without them knows only its special tokens); {hint}"
        )


def recipe_path(folder: str | os.PathLike) -> Path:
    """Where a model folder keeps the recipe it was trained with."""
    return Path(folder) / RECIPE_FILE


def structural_modifiers(recipe: Any) -> list[Any]:
    """The recipe's modifiers that override `apply_structure` (QAT, layer/structured pruning)."""
    from sparseforge.manager import Manager
    from sparseforge.modifiers.base import Modifier

    return [
        mod
        for mod in Manager(recipe).modifiers
        if type(mod).apply_structure is not Modifier.apply_structure
    ]


def apply_structure(
    model: torch.nn.Module, recipe: Any, state: dict[str, torch.Tensor] | None = None
) -> torch.nn.Module:
    """`model` with the structure `recipe` leaves in a trained model; returns the model to load.

    With the checkpoint's `state`, a modifier whose structure the weights show no trace of (none
    of the tensors it adds, all of those it removes, no tensor in its new shape) is skipped: the
    checkpoint was saved before that modifier started (e.g. QAT from epoch 5, saved at epoch 2).
    """
    for mod in structural_modifiers(recipe):
        if state is None:
            mod.apply_structure(model)
            continue
        trial = copy.deepcopy(model)
        mod.apply_structure(trial)
        if _shows_structure(model, trial, state):
            model = trial
        else:
            logger.info(
                "%s: the weights do not carry its structure (saved before it started); not applied",
                mod.name,
            )
    return model


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _shows_structure(
    before: torch.nn.Module, after: torch.nn.Module, state: dict[str, torch.Tensor]
) -> bool:
    """Whether `state` shows any change from `before` to `after` (or nothing changed)."""
    old, new = _shapes(before), _shapes(after)
    added = new.keys() - old.keys()
    removed = old.keys() - new.keys()
    reshaped = {key for key in old.keys() & new.keys() if old[key] != new[key]}
    if not (added or removed or reshaped):
        return True
    return (
        any(key in state for key in added)
        or any(key not in state for key in removed)
        or any(key in state and tuple(state[key].shape) == new[key] for key in reshaped)
    )


def load_strict(
    model: torch.nn.Module, state: dict[str, torch.Tensor], folder: str | os.PathLike
) -> None:
    """Load `state` into `model`; only keys of weights tied to a loaded one may be missing."""
    model_shapes = _shapes(model)
    mismatched = [
        f"{key} {tuple(value.shape)} vs {model_shapes[key]}"
        for key, value in state.items()
        if key in model_shapes and tuple(value.shape) != model_shapes[key]
    ]
    if mismatched:
        _refuse(folder, [f"shapes differ: {_first(mismatched)}"])
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
        problems.append(f"missing from the checkpoint: {_first(missing)}")
    if result.unexpected_keys:
        problems.append(f"not in the model: {_first(result.unexpected_keys)}")
    if problems:
        _refuse(folder, problems)


def _first(keys: Iterable[str], count: int = 6) -> str:
    keys = list(keys)
    return ", ".join(keys[:count]) + (" ..." if len(keys) > count else "")


def _refuse(folder: str | os.PathLike, problems: list[str]) -> None:
    hint = (
        "was the model saved with a different recipe?"
        if recipe_path(folder).is_file()
        else f"there is no {RECIPE_FILE} beside the weights to rebuild the model's structure "
        "(QAT, removed layers); pass the training recipe (recipe=..., --recipe)"
    )
    raise ModelMatchError(
        f"{folder}: the weights do not fit the model built from {CONFIG_FILE} + {RECIPE_FILE} ("
        + "; ".join(problems)
        + f"); {hint}"
    )


def load_model(
    folder: str | os.PathLike,
    build_model: BuildModel,
    *,
    recipe: str | os.PathLike | None = None,
) -> torch.nn.Module:
    """The model saved in `folder`: `build_model()`, the recipe's structure, the weights (strict).

    `recipe` defaults to the folder's `recipe.yaml` (none: the bare model). Returned in eval mode.
    """
    folder = Path(folder)
    source = Path(recipe) if recipe is not None else recipe_path(folder)
    if recipe is not None and not source.is_file():
        raise SparseforgeError(f"recipe not found: {source}")
    state = load_state_dict(folder)
    model = build_model()
    _apply_compaction(model)
    if source.is_file():
        model = apply_structure(model, source, state)
    load_strict(model, state, folder)
    return model.eval()


def _apply_compaction(model: torch.nn.Module) -> None:
    """Shrink a structurally pruned model's layers to the shapes its config.json records
    (`sparseforge_structure`), before any recipe structure (QAT wraps the smaller Linears)."""
    from sparseforge.modifiers.pruning.compaction import apply_compaction_plan, plan_of

    plan = plan_of(model)
    if plan is not None:
        apply_compaction_plan(model, plan)


def hf_task_builder(folder: str | os.PathLike, task: str, **config_kwargs: Any) -> BuildModel:
    """A `build_model` for a Hugging Face folder: the task's Auto class from its `config.json`.

    `config_kwargs` override config fields (e.g. `num_labels`). Imports Hugging Face transformers
    (the library), not sparseforge's Hugging Face layer.
    """
    from sparseforge.tasks import AUTO_MODEL_CLASSES, normalize_task

    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file():
        raise SparseforgeError(
            f"{folder}: no {CONFIG_FILE}; --model_path must be a saved Hugging Face model folder"
        )
    task = normalize_task(task)
    _refuse_compressed_tensors(folder)

    def build() -> torch.nn.Module:
        import transformers

        config = transformers.AutoConfig.from_pretrained(str(folder), **config_kwargs)
        return getattr(transformers, AUTO_MODEL_CLASSES[task]).from_config(config)

    return build


def _refuse_compressed_tensors(folder: Path) -> None:
    """A folder written with --save_compressed is for transformers + compressed-tensors."""
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    if (config.get("quantization_config") or {}).get("quant_method") == "compressed-tensors":
        raise ModelMatchError(
            f"{folder} is saved in the compressed-tensors format (--save_compressed): load it with "
            "transformers' from_pretrained (compressed-tensors installed); for a folder sparseforge "
            "reloads and exports, run oneshot / training without --save_compressed"
        )


def load_task_model(
    folder: str | os.PathLike,
    task: str,
    *,
    recipe: str | os.PathLike | None = None,
    **config_kwargs: Any,
) -> torch.nn.Module:
    """`load_model` of a Hugging Face folder for `task` (aliases allowed): what export loads."""
    return load_model(folder, hf_task_builder(folder, task, **config_kwargs), recipe=recipe)


__all__ = [
    "RECIPE_FILE",
    "apply_structure",
    "hf_task_builder",
    "load_model",
    "load_state_dict",
    "load_strict",
    "load_task_model",
    "recipe_path",
    "require_tokenizer_files",
    "weight_files",
]
