"""The shared runner of `sparseforge train TASK` and the helpers the task modules share.

A task module exposes `build(args: TaskArgs) -> TaskRun`; `run_cli` parses and resolves the
arguments once (zoo: stubs, recipe, teacher), calls `build`, and `drive`s the TaskRun: train or
one-shot, save, evaluate, predict, export. The validation hold-out and the split checks are here
(`prepare_splits`), not in each task.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparseforge.errors import DataError, SparseforgeError
from sparseforge.transformers.data import hold_out

logger = logging.getLogger(__name__)


def load_tokenizer(model_args: Any, model_path: str) -> Any:
    """The tokenizer of `--tokenizer_name` or of the model folder; a one-line error otherwise
    (also for a folder without tokenizer files, which transformers would fill with a stub)."""
    from transformers import AutoTokenizer

    from sparseforge.transformers.loading import require_tokenizer_files

    path = model_args.tokenizer_name or model_path
    flag = "--tokenizer_name" if model_args.tokenizer_name else "--model_name_or_path"
    require_tokenizer_files(
        path, flag, "save the tokenizer with the model, or pass --tokenizer_name FOLDER"
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, use_fast=model_args.use_fast_tokenizer, cache_dir=model_args.cache_dir
        )
    except (OSError, ValueError) as err:
        raise SparseforgeError(
            f"cannot load a tokenizer from {path}: {str(err).splitlines()[0]}"
        ) from None
    return tokenizer


def require_fast_tokenizer(tokenizer: Any, why: str) -> None:
    """Offsets and word ids exist only on fast (Rust) tokenizers."""
    if not getattr(tokenizer, "is_fast", False):
        raise SparseforgeError(
            f"{why} needs a fast tokenizer; {type(tokenizer).__name__} is not one (drop --use_fast_tokenizer False)"
        )


def sequence_length(requested: int | None, default: int, tokenizer: Any, model: Any) -> int:
    """`--max_seq_length` (or the task default) capped by what the tokenizer and model accept."""
    limits = [requested or default, tokenizer.model_max_length]
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if positions:
        # BERT-like models reserve no positions; RoBERTa-like ones offset by padding_idx + 1
        offset = (
            2
            if getattr(model.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert")
            else 0
        )
        limits.append(positions - offset)
    length = min(limits)
    if requested and length < requested:
        logger.warning(
            "--max_seq_length %d is more than the model accepts: using %d", requested, length
        )
    return length


def dataset_from_rows(rows: list[dict[str, Any]]) -> Any:
    import datasets

    return datasets.Dataset.from_list(rows)


def check_splits(
    raw: Mapping[str, Any], training_args: Any, sources: str = "--train_file or --dataset_name"
) -> None:
    """Each of --do_train / --do_eval / --do_predict has its split; `sources` names the task's data flags."""
    if training_args.do_train and "train" not in raw:
        raise DataError(f"--do_train needs training data ({sources})")
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


def prepare_splits(
    raw: Any, args: TaskArgs, sources: str = "--train_file or --dataset_name"
) -> Any:
    """The one place every task's raw splits go through: the `--validation_ratio` hold-out, then
    the checks that each requested step has its split (before anything is tokenized)."""
    raw = hold_out(raw, args.data.validation_ratio, args.training.seed)
    check_splits(raw, args.training, sources)
    check_one_shot_data(raw, args.recipe, args.run.one_shot)
    return raw


def wanted_splits(args: TaskArgs) -> dict[str, bool]:
    """Which processed splits the run uses: train also feeds --one_shot's gradients/calibration."""
    return {
        "train": bool(args.training.do_train or args.run.one_shot),
        "validation": bool(args.training.do_eval),
        "test": bool(args.training.do_predict),
    }


def sample_limits(data_args: Any) -> dict[str, int | None]:
    """`--max_{train,eval,predict}_samples` by split."""
    return {
        "train": data_args.max_train_samples,
        "validation": data_args.max_eval_samples,
        "test": data_args.max_predict_samples,
    }


def map_split(
    dataset: Any, function: Any, training_args: Any, data_args: Any, split: str, **kwargs: Any
) -> Any:
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


# ----- what a task hands the runner --------------------------------------------------------------
@dataclass
class TaskArgs:
    """One `sparseforge train TASK` run's arguments, with the edge already resolved: `model_path`
    and `teacher` are local paths (zoo: stubs resolved), `recipe` is loaded and validated.

    `run` is the `RecipeArguments` dataclass (recipe, one-shot, export...); its `recipe_args`
    field is the recipe's variable overrides, the only thing that name means in the code.
    """

    model: Any
    data: Any
    run: Any
    training: Any
    model_path: str = ""
    recipe: Any = None
    teacher: str | None = None


@dataclass
class TaskRun:
    """What a task's `build(args)` returns and the shared runner drives, top to bottom:
    train (or one-shot) -> evaluate `eval_dataset` then `extra_eval` -> `predict` on
    `predict_dataset` -> export with inputs of `sequence_length` tokens."""

    trainer: Any
    sequence_length: int
    train_dataset: Any = None
    eval_dataset: Any = None
    predict_dataset: Any = None
    compute_metrics: Callable[[Any], dict[str, float]] | None = None
    extra_eval: dict[str, Any] = field(default_factory=dict)
    predict: Callable[[Any, Any], None] | None = None


def task_run(
    args: TaskArgs,
    datasets: Mapping[str, Any],
    model: Any,
    tokenizer: Any,
    compute_metrics: Callable[[Any], dict[str, float]] | None,
    sequence_length: int,
    *,
    predict: Callable[[Any, Any], None] | None = None,
    extra_eval: Mapping[str, Any] | None = None,
    collator: Any = None,
    **trainer_kwargs: Any,
) -> TaskRun:
    """The SparseTrainer (recipe and teacher from `args`) and the TaskRun around it; `datasets`
    holds the processed train / validation / test splits the run uses. The collator defaults to
    `padding_collator`."""
    from sparseforge.transformers.trainer import SparseTrainer

    trainer = SparseTrainer(
        model=model,
        args=args.training,
        train_dataset=datasets.get(
            "train"
        ),  # also --one_shot's source of gradients and calibration
        eval_dataset=datasets.get("validation"),
        processing_class=tokenizer,
        data_collator=collator if collator is not None else padding_collator(args, tokenizer),
        compute_metrics=compute_metrics,
        recipe=args.recipe,
        teacher=args.teacher,
        **trainer_kwargs,
    )
    return TaskRun(
        trainer=trainer,
        sequence_length=sequence_length,
        train_dataset=datasets.get("train"),
        eval_dataset=datasets.get("validation"),
        predict_dataset=datasets.get("test"),
        compute_metrics=compute_metrics,
        extra_eval=dict(extra_eval or {}),
        predict=predict,
    )


def padding_collator(args: TaskArgs, tokenizer: Any, dynamic: Any = None) -> Any:
    """Inputs already padded to --max_seq_length are stacked; otherwise `dynamic` (default
    `DataCollatorWithPadding`) pads each batch to its longest."""
    from transformers import DataCollatorWithPadding, default_data_collator

    if args.data.pad_to_max_length:
        return default_data_collator
    return (dynamic or DataCollatorWithPadding)(tokenizer)


def predict_and_log(
    trainer: Any, dataset: Any, compute_metrics: Callable[[Any], dict[str, float]] | None = None
) -> Any:
    """`trainer.predict` with the "predict" prefix (with `compute_metrics` instead of the
    evaluation's when given), its metrics logged and saved to predict_results.json."""
    eval_metrics = trainer.compute_metrics
    if compute_metrics is not None:
        trainer.compute_metrics = compute_metrics
    try:
        output = trainer.predict(dataset, metric_key_prefix="predict")
    finally:
        trainer.compute_metrics = eval_metrics
    trainer.log_metrics("predict", output.metrics)
    trainer.save_metrics("predict", output.metrics)
    return output


# ----- the runner ----------------------------------------------------------------------------------
def parse_args(argv: Sequence[str], task: str, data_arguments: type) -> TaskArgs:
    """Parse the flags and resolve the edge once: model, recipe and teacher zoo: stubs become
    paths, the recipe is loaded, and a teacher folder with the wrong head fails before any data
    is read."""
    from sparseforge.transformers.arguments import (
        ModelArguments,
        RecipeArguments,
        parse_task_args,
        resolve_model_and_recipe,
    )
    from sparseforge.transformers.trainer import check_teacher_folder, teacher_source

    model_args, data_args, run_args, training_args = parse_task_args(
        argv, ModelArguments, data_arguments, RecipeArguments, prog=f"sparseforge train {task}"
    )
    args = TaskArgs(model_args, data_args, run_args, training_args)
    args.model_path, args.recipe = resolve_model_and_recipe(model_args, run_args)
    args.teacher = teacher_source(model_args.distill_teacher)
    if args.teacher not in (None, "self"):
        check_teacher_folder(args.teacher, task)
    return args


def run_cli(
    argv: Sequence[str], *, task: str, data_arguments: type, build: Callable[[TaskArgs], TaskRun]
) -> int:
    """The task-module contract in one place: parse the flags, check the output folder, build the
    TaskRun (nothing is left in a new folder if that fails), drive it, print metrics.
    The output folder's manifest records which of its files are the user's, so that a later
    --overwrite_output_dir replaces only what sparseforge wrote."""
    from transformers import set_seed

    from sparseforge.transformers.arguments import (
        check_output_dir,
        new_output_dir_guard,
        user_entries,
        write_output_manifest,
    )

    args = parse_args(argv, task, data_arguments)
    training_args = args.training
    resume = check_output_dir(training_args, args.run)
    user_files = user_entries(Path(training_args.output_dir))
    with new_output_dir_guard(training_args.output_dir):
        set_seed(training_args.seed)
        run = build(args)
        if training_args.should_save:
            write_output_manifest(training_args.output_dir, user_files, finished=False)
        metrics = drive(run, args.run, task=task, resume_from_checkpoint=resume)
    if training_args.should_save:
        write_output_manifest(training_args.output_dir, user_files, finished=True)
    print_metrics(metrics, training_args)
    return 0


def drive(
    run: TaskRun, run_args: Any, *, task: str, resume_from_checkpoint: str | None = None
) -> dict[str, float]:
    """Train (or one-shot), save, evaluate into eval_results.json, predict, export: the one
    sequence every task runs. Returns the evaluation metrics."""
    from sparseforge.transformers.trainer import best_model_after_epoch, export_onnx, one_shot

    trainer = run.trainer
    args = trainer.args
    if run_args.save_compressed:
        _check_compressed_plan(trainer)
    if run_args.best_model_after_epoch is not None:
        trainer.add_callback(best_model_after_epoch(run_args.best_model_after_epoch))
    if run_args.one_shot:
        one_shot(trainer)
        trainer.save_model()
    elif args.do_train:
        result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
        trainer.save_model()
        train_metrics = dict(result.metrics)
        train_metrics["train_samples"] = len(trainer.train_dataset)
        trainer.log_metrics("train", train_metrics)
        trainer.save_metrics("train", train_metrics)
        trainer.save_state()
    if run_args.save_compressed and args.should_save and (run_args.one_shot or args.do_train):
        _save_compressed(trainer)
    metrics = evaluate(run) if args.do_eval and run.eval_dataset is not None else {}
    if args.do_predict and run.predict is not None and run.predict_dataset is not None:
        run.predict(trainer, run.predict_dataset)
    if run_args.onnx_export_path and args.should_save:
        path = export_onnx(
            args.output_dir,
            run_args.onnx_export_path,
            task,
            run.sequence_length,
            run_args.num_export_samples,
        )
        logger.info("exported to %s", path)
    return metrics


COMPRESSED_DIR = "compressed"  # --save_compressed's folder inside --output_dir


def _check_compressed_plan(trainer: Any) -> None:
    """--save_compressed is refused before training when the recipe cannot give a model the
    compressed-tensors format holds (no quantization, or embeddings / attention quantized)."""
    from sparseforge.errors import SparseforgeError
    from sparseforge.transformers.arguments import user_entries
    from sparseforge.transformers.compressed import check_plan

    if trainer.manager is None:
        raise SparseforgeError("--save_compressed needs a --recipe that quantizes the model")
    output_dir = Path(trainer.args.output_dir)
    if (output_dir / COMPRESSED_DIR).exists() and COMPRESSED_DIR in user_entries(output_dir):
        raise SparseforgeError(
            f"--save_compressed writes {output_dir / COMPRESSED_DIR}, which holds files sparseforge "
            "did not write: move them or choose another --output_dir"
        )
    check_plan(trainer.model, list(trainer.manager.modifiers))


def _save_compressed(trainer: Any) -> None:
    """The trained model beside the sparseforge folder, in the compressed-tensors format that
    plain transformers loads (the sparseforge folder stays for export and resuming)."""
    from sparseforge.checkpoint import folder_written_aside
    from sparseforge.transformers.compressed import save_compressed_model

    target = Path(trainer.args.output_dir) / COMPRESSED_DIR
    # a previous sparseforge run's folder is replaced; a user's was refused before training
    with folder_written_aside(target, replace_own=True) as staging:
        sizes = save_compressed_model(trainer.model, staging)
        if trainer.processing_class is not None:
            trainer.processing_class.save_pretrained(str(staging))
    logger.info(
        "compressed-tensors copy in %s: quantized weights %.1f%% of their FP32 bytes",
        target,
        100 * sizes["quantized_weight_fraction"],
    )


def evaluate(run: TaskRun) -> dict[str, float]:
    """`eval_dataset`, then each extra set (metrics suffixed with its name), saved as eval_results.json."""
    trainer = run.trainer
    metrics = trainer.evaluate(eval_dataset=run.eval_dataset)
    for suffix, dataset in run.extra_eval.items():
        extra = trainer.evaluate(eval_dataset=dataset)
        metrics.update({f"{key}_{suffix}": value for key, value in extra.items()})
    metrics["eval_samples"] = len(run.eval_dataset)
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics(
        "eval", metrics
    )  # eval_results.json (+ all_results.json), main process only
    return metrics


def print_metrics(metrics: Mapping[str, Any], training_args: Any) -> None:
    """The CLI's one summary line of the final evaluation."""
    if metrics and training_args.should_log:
        print(
            "eval: "
            + ", ".join(
                f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                for k, v in sorted(metrics.items())
            )
        )


def main_process_writes(
    training_args: Any, output_dir: str | os.PathLike | None = None
) -> Path | None:
    """The folder to write prediction files into, or None on processes that must not write."""
    if not training_args.should_save:
        return None
    path = Path(output_dir or training_args.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path
