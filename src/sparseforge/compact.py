"""`sparseforge compact MODEL_DIR --output_dir OUT`: remove pruned heads, neurons and layers for real.

A model pruned with masks (structured pruning with `compact: false`, or any model whose attention
heads / FFN neurons / layers have all-zero weights) keeps its dense shapes, so it is as large and
as slow as the dense model. This command loads it (recipe structure included), removes every
head, neuron and layer whose weights are all zero (`compaction.compact_zeroed`), and writes a new
model folder whose `config.json` records the smaller shapes; `load_model` and `sparseforge export
onnx` read it. The source folder is never modified; the output is written beside and renamed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from sparseforge.checkpoint import folder_written_aside
from sparseforge.errors import SparseforgeError
from sparseforge.tasks import AUTO_MODEL_CLASSES, TASK_ALIASES, normalize_task

logger = logging.getLogger(__name__)

# config.json `architectures` suffix -> task, for when --task is not given
_ARCHITECTURE_TASKS = {
    "ForSequenceClassification": "text-classification",
    "ForTokenClassification": "token-classification",
    "ForQuestionAnswering": "question-answering",
    "ForMaskedLM": "masked-language-modeling",
}
_WEIGHT_NAMES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "config.json",
)


def task_of(folder: Path) -> str:
    """The task a saved model was built for, from `architectures` in its config.json."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    for architecture in config.get("architectures") or []:
        for suffix, task in _ARCHITECTURE_TASKS.items():
            if architecture.endswith(suffix):
                return task
    raise SparseforgeError(
        f"{folder}: cannot tell the task from config.json architectures "
        f"{config.get('architectures')}; pass --task ({', '.join(AUTO_MODEL_CLASSES)})"
    )


def compact_folder(
    model_dir: str | os.PathLike, output_dir: str | os.PathLike, task: str | None = None
) -> Path:
    """Write a compacted copy of the model folder `model_dir` to `output_dir` (which must not exist
    or be empty); returns the output folder."""
    from sparseforge.modifiers.pruning.compaction import compact_zeroed
    from sparseforge.transformers.loading import load_model

    source, target = Path(model_dir), Path(output_dir)
    if not (source / "config.json").is_file():
        raise SparseforgeError(f"{source}: no config.json; MODEL_DIR must be a saved model folder")
    if target.resolve() == source.resolve():
        raise SparseforgeError(
            "--output_dir must differ from MODEL_DIR: the source folder is never modified"
        )
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise SparseforgeError(
            f"--output_dir {target} exists and is not empty; choose another folder"
        )
    task = normalize_task(task) if task else task_of(source)
    model = load_model(source, task)
    plan = compact_zeroed(model)
    with folder_written_aside(target) as staging:
        model.save_pretrained(str(staging))
        for item in source.iterdir():
            if (
                item.is_file()
                and item.name not in _WEIGHT_NAMES
                and not item.name.endswith(".safetensors")
            ):
                shutil.copy2(item, staging / item.name)
    logger.info(
        "compacted %s -> %s: %d of %d layers",
        source,
        target,
        len(plan["kept_layers"]),
        plan["dense"]["num_layers"],
    )
    return target


def cli_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="sparseforge compact",
        description="Remove pruned (all-zero) attention heads, FFN neurons and layers from a saved "
        "model, writing a smaller model folder that load_model and export read.",
    )
    parser.add_argument(
        "model_dir", help="saved model folder (config.json, weights, tokenizer, recipe.yaml)"
    )
    parser.add_argument(
        "--output_dir", "--output-dir", required=True, help="new folder for the compacted model"
    )
    parser.add_argument(
        "--task",
        default=None,
        help=f"task or alias (default: from config.json): {', '.join(sorted(TASK_ALIASES))}",
    )
    parser.add_argument(
        "--sequence_length",
        "--sequence-length",
        type=int,
        default=128,
        help="for the MAC count printed (default 128)",
    )
    args = parser.parse_args(list(argv))
    target = compact_folder(args.model_dir, args.output_dir, args.task)
    from sparseforge.sparsity import format_structure, structure_of_path

    structure = structure_of_path(target)
    print(f"compacted model written to {target}")
    if structure is not None:
        print(format_structure(structure, args.sequence_length))
    return 0
