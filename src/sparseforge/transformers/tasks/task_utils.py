"""Small helpers the token-classification, question-answering and masked-LM CLIs share."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sparseforge.errors import DataError, SparseforgeError

logger = logging.getLogger(__name__)


def load_tokenizer(model_args: Any, model_path: str) -> Any:
    """The tokenizer of `--tokenizer_name` or of the model folder; a one-line error otherwise
    (also for a folder without tokenizer files, which transformers would fill with a stub)."""
    from transformers import AutoTokenizer

    from sparseforge.transformers.loading import require_tokenizer_files

    path = model_args.tokenizer_name or model_path
    flag = "--tokenizer_name" if model_args.tokenizer_name else "--model_name_or_path"
    require_tokenizer_files(path, flag, "save the tokenizer with the model, or pass --tokenizer_name FOLDER")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, use_fast=model_args.use_fast_tokenizer, cache_dir=model_args.cache_dir)
    except (OSError, ValueError) as err:
        raise SparseforgeError(f"cannot load a tokenizer from {path}: {str(err).splitlines()[0]}") from None
    return tokenizer


def require_fast_tokenizer(tokenizer: Any, why: str) -> None:
    """Offsets and word ids exist only on fast (Rust) tokenizers."""
    if not getattr(tokenizer, "is_fast", False):
        raise SparseforgeError(f"{why} needs a fast tokenizer; {type(tokenizer).__name__} is not one (drop --use_fast_tokenizer False)")


def sequence_length(requested: int | None, default: int, tokenizer: Any, model: Any) -> int:
    """`--max_seq_length` (or the task default) capped by what the tokenizer and model accept."""
    limits = [requested or default, tokenizer.model_max_length]
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if positions:
        # BERT-like models reserve no positions; RoBERTa-like ones offset by padding_idx + 1
        offset = 2 if getattr(model.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert") else 0
        limits.append(positions - offset)
    length = min(limits)
    if requested and length < requested:
        logger.warning("--max_seq_length %d is more than the model accepts: using %d", requested, length)
    return length


def dataset_from_rows(rows: list[dict[str, Any]]) -> Any:
    import datasets

    return datasets.Dataset.from_list(rows)


def hold_out(raw: Any, ratio: float | None, seed: int) -> Any:
    """`--validation_ratio`: replace the validation split by a seeded part of train."""
    if not ratio:
        return raw
    if "train" not in raw:
        raise DataError("--validation_ratio needs a training split to hold out from")
    if "validation" in raw:
        logger.warning("--validation_ratio %s: the validation split is replaced by part of train", ratio)
    parts = raw["train"].train_test_split(test_size=ratio, seed=seed)
    raw["train"], raw["validation"] = parts["train"], parts["test"]
    return raw


def check_splits(raw: Mapping[str, Any], training_args: Any) -> None:
    if training_args.do_train and "train" not in raw:
        raise DataError("--do_train needs training data (--train_file or --dataset_name)")
    if training_args.do_eval and "validation" not in raw:
        raise DataError("--do_eval needs evaluation data (--validation_file or --validation_ratio)")
    if training_args.do_predict and "test" not in raw:
        raise DataError("--do_predict needs --test_file")


def check_one_shot_data(raw: Mapping[str, Any], recipe: Any, one_shot: bool) -> None:
    """`--one_shot` with OBS pruning or QAT calibration draws training batches: fail before loading."""
    if not one_shot or recipe is None or "train" in raw:
        return
    needing = sorted({mod.name for mod in recipe.modifiers if mod.needs_training_batches()})
    if needing:
        raise DataError(
            f"--one_shot with {', '.join(needing)} needs training batches (gradients or calibration): "
            "pass --train_file (or --dataset_name)"
        )


def map_split(dataset: Any, function: Any, training_args: Any, data_args: Any, split: str, **kwargs: Any) -> Any:
    """`dataset.map(function, batched=True)` with the shared flags, on the main process first."""
    with training_args.main_process_first(desc=f"preprocessing {split}"):
        return dataset.map(
            function,
            batched=True,
            num_proc=data_args.preprocessing_num_workers,
            load_from_cache_file=not data_args.overwrite_cache,
            desc=f"preprocessing {split}",
            **kwargs,
        )


def run_cli(
    argv: Sequence[str],
    *,
    task: str,
    data_arguments: type,
    build: Callable[..., tuple[Any, dict[str, Any]]],
) -> int:
    """The task-module contract in one place: parse the flags, check the output folder, build the
    trainer (nothing is left in a new folder if that fails), train/evaluate/export, print metrics.
    The output folder's manifest records which of its files are the user's, so that a later
    --overwrite_output_dir replaces only what sparseforge wrote.

    `build(model_args, data_args, recipe_args, training_args)` returns the trainer and the extra
    keyword arguments of `run_task` (predict_fn, sequence_length, eval_datasets).
    """
    from sparseforge.transformers.arguments import (
        ModelArguments,
        RecipeArguments,
        check_output_dir,
        new_output_dir_guard,
        parse_task_args,
        user_entries,
        write_output_manifest,
    )
    from sparseforge.transformers.trainer import run_task

    model_args, data_args, recipe_args, training_args = parse_task_args(
        argv, ModelArguments, data_arguments, RecipeArguments, prog=f"sparseforge train {task}"
    )
    resume = check_output_dir(training_args, recipe_args)
    user_files = user_entries(Path(training_args.output_dir))
    with new_output_dir_guard(training_args.output_dir):
        trainer, run_kwargs = build(model_args, data_args, recipe_args, training_args)
        if training_args.should_save:
            write_output_manifest(training_args.output_dir, user_files, finished=False)
        metrics = run_task(trainer, task=task, recipe_args=recipe_args, resume_from_checkpoint=resume, **run_kwargs)
    if training_args.should_save:
        write_output_manifest(training_args.output_dir, user_files, finished=True)
    print_metrics(metrics, training_args)
    return 0


def print_metrics(metrics: Mapping[str, Any], training_args: Any) -> None:
    """The CLI's one summary line of the final evaluation."""
    if metrics and training_args.should_log:
        print("eval: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(metrics.items())))


def main_process_writes(training_args: Any, output_dir: str | os.PathLike | None = None) -> Path | None:
    """The folder to write prediction files into, or None on processes that must not write."""
    if not training_args.should_save:
        return None
    path = Path(output_dir or training_args.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path
