"""Argument dataclasses for `sparseforge train <task>`, parsed by `HfArgumentParser`.

Help text lives in each field's metadata, so `--help`, the docs and the Python API agree. Every
task CLI parses `ModelArguments`, `RecipeArguments`, its own data arguments (a subclass of
`DataArguments`) and transformers' `TrainingArguments` with `parse_task_args`, which also:

- rewrites SparseML's / transformers 4.x flag spellings (`LEGACY_FLAGS`, e.g.
  `--evaluation_strategy` -> `--eval_strategy`, `--no_cuda` -> `--use_cpu`, `--group_by_length`
  -> `--train_sampling_strategy group_by_length`);
- turns `--fp16` on a machine without a CUDA GPU into a warning and fp32 training;
- refuses `--report_to tensorboard|wandb|mlflow` when that package is missing (`check_reporting`);
- checks the output directory (`check_output_dir`) before anything is trained or written.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparseforge.errors import SparseforgeError

logger = logging.getLogger(__name__)


def _help(text: str) -> dict[str, Any]:
    return {"help": text}


@dataclass
class ModelArguments:
    """Which model, config and tokenizer to start from, and the distillation teacher."""

    model_name_or_path: str = field(
        metadata=_help(
            "Folder of a Hugging Face model (config.json + weights) or a zoo: stub to start from"
        )
    )
    config_name: str | None = field(
        default=None, metadata=_help("Config folder if not the model's own")
    )
    tokenizer_name: str | None = field(
        default=None, metadata=_help("Tokenizer folder if not the model's own")
    )
    cache_dir: str | None = field(
        default=None, metadata=_help("Where to cache datasets read through `datasets`")
    )
    use_fast_tokenizer: bool = field(
        default=True, metadata=_help("Use a fast (Rust) tokenizer when one exists")
    )
    model_revision: str = field(
        default="main", metadata=_help("Model revision (kept for SparseML command lines)")
    )
    use_auth_token: bool = field(
        default=False, metadata=_help("Ignored: sparseforge never downloads models")
    )
    distill_teacher: str | None = field(
        default=None,
        metadata=_help(
            "Teacher for the recipe's distillation modifiers: a model folder or zoo: stub, 'self' (a frozen copy "
            "of the starting model) or 'disable'. Without it, distillation modifiers do nothing"
        ),
    )


@dataclass
class RecipeArguments:
    """The recipe and what to do around training: one-shot, export, best-model selection.

    Code holds an instance as `run_args`; `recipe_args` always means the variable overrides
    (this class's `recipe_args` field, `--recipe_args`), as in SparseML.
    """

    recipe: str | None = field(
        default=None,
        metadata=_help(
            "Recipe file (.yaml, .yml, .md) or zoo: stub; without it, plain fine-tuning"
        ),
    )
    recipe_args: str | None = field(
        default=None,
        metadata=_help("Recipe variable overrides: JSON object or name=value,name2=value2"),
    )
    one_shot: bool = field(
        default=False,
        metadata=_help("Apply the recipe at once (its end state) without training, then save"),
    )
    onnx_export_path: str | None = field(
        default=None, metadata=_help("After training, export the model to ONNX into this folder")
    )
    save_compressed: bool = field(
        default=False,
        metadata=_help(
            "Also write the trained model in the compressed-tensors format to OUTPUT_DIR/compressed "
            "(needs a recipe that quantizes Linear layers only, and the compressed-tensors package)"
        ),
    )
    num_export_samples: int = field(
        default=0, metadata=_help("Sample inputs/outputs to save with the ONNX export (0 = none)")
    )
    best_model_after_epoch: int | None = field(
        default=None,
        metadata=_help(
            "With --load_best_model_at_end, only evaluations from this epoch on can be the best model"
        ),
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata=_help(
            "Train into a non-empty --output_dir (otherwise an error, or resume from its last checkpoint)"
        ),
    )


@dataclass
class DataArguments:
    """Where the data comes from and how it is cut; shared by every task (tasks subclass it)."""

    dataset_name: str | None = field(
        default=None,
        metadata=_help(
            "Dataset name for `datasets.load_dataset` (needs the network; offline, pass files)"
        ),
    )
    dataset_config_name: str | None = field(
        default=None, metadata=_help("Configuration of --dataset_name")
    )
    train_file: str | None = field(
        default=None, metadata=_help("Training data: csv, tsv, json, jsonl or parquet")
    )
    validation_file: str | None = field(
        default=None, metadata=_help("Evaluation data (same formats)")
    )
    test_file: str | None = field(default=None, metadata=_help("Prediction data (same formats)"))
    validation_ratio: float | None = field(
        default=None,
        metadata=_help(
            "Without a validation split, hold out this fraction of train (seeded by --seed)"
        ),
    )
    max_seq_length: int | None = field(
        default=None,
        metadata=_help(
            "Longest tokenized input; longer inputs are truncated (task default if unset)"
        ),
    )
    pad_to_max_length: bool = field(
        default=True,
        metadata=_help(
            "Pad every input to --max_seq_length (False: pad each batch to its longest)"
        ),
    )
    max_train_samples: int | None = field(
        default=None, metadata=_help("Use only the first N training examples")
    )
    max_eval_samples: int | None = field(
        default=None, metadata=_help("Use only the first N evaluation examples")
    )
    max_predict_samples: int | None = field(
        default=None, metadata=_help("Use only the first N test examples")
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata=_help("Processes for tokenization (`datasets.map(num_proc=...)`)")
    )
    overwrite_cache: bool = field(
        default=False, metadata=_help("Re-run preprocessing instead of using the cache")
    )

    def check(self) -> None:
        """Argument combinations that cannot work, as one-line errors."""
        if self.validation_ratio is not None and not 0.0 < self.validation_ratio < 1.0:
            raise SparseforgeError(
                f"--validation_ratio must be between 0 and 1, got {self.validation_ratio}"
            )
        for name in (
            "max_train_samples",
            "max_eval_samples",
            "max_predict_samples",
            "max_seq_length",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SparseforgeError(f"--{name} must be a positive integer, got {value}")


# Flags SparseML's scripts (transformers 4.x) accepted, spelled as transformers 5 spells them.
# A value of None means the flag is gone and is dropped with a warning (its value too).
LEGACY_FLAGS: dict[str, str | None] = {
    "--evaluation_strategy": "--eval_strategy",
    "--no_cuda": "--use_cpu",
    "--per_gpu_train_batch_size": "--per_device_train_batch_size",
    "--per_gpu_eval_batch_size": "--per_device_eval_batch_size",
    "--warmup_ratio": "--warmup_steps",  # transformers 5 reads a float < 1 as a ratio
    "--include_inputs_for_metrics": None,
    "--fp16_backend": None,
    "--half_precision_backend": None,
    "--fp16_opt_level": None,
    "--save_safetensors": None,
    "--logging_dir": None,
}
_VALUED_LEGACY = {"--fp16_backend", "--half_precision_backend", "--fp16_opt_level", "--logging_dir"}
# transformers 4.x booleans that became a choice of a transformers 5 flag: (new flag, value when true).
LEGACY_BOOLEANS: dict[str, tuple[str, str]] = {
    "--group_by_length": ("--train_sampling_strategy", "group_by_length"),
}
_BOOLEAN_VALUES = {"true": True, "false": False}


def translate_legacy_flags(argv: Sequence[str]) -> list[str]:
    """Rewrite legacy spellings (`--evaluation_strategy epoch` and `--evaluation_strategy=epoch`)."""
    out: list[str] = []
    items = list(argv)
    index = 0
    while index < len(items):
        item = items[index]
        flag, eq, value = item.partition("=")
        if flag in LEGACY_BOOLEANS:
            # `--group_by_length`, `--group_by_length true|false`, `--group_by_length=false`
            if not eq and index + 1 < len(items) and items[index + 1].lower() in _BOOLEAN_VALUES:
                value = items[index + 1]
                index += 1
            index += 1
            if value and value.lower() not in _BOOLEAN_VALUES:
                raise SparseforgeError(f"{flag} takes true or false, got {value!r}")
            if _BOOLEAN_VALUES.get(value.lower(), True):
                new_flag, choice = LEGACY_BOOLEANS[flag]
                logger.info("legacy flag %s read as %s %s", flag, new_flag, choice)
                out += [new_flag, choice]
            continue
        if flag in LEGACY_FLAGS:
            new = LEGACY_FLAGS[flag]
            if new is None:
                takes_value = flag in _VALUED_LEGACY or (
                    index + 1 < len(items) and items[index + 1].lower() in _BOOLEAN_VALUES
                )
                if flag == "--logging_dir" and (eq or index + 1 < len(items)):
                    os.environ.setdefault(
                        "TENSORBOARD_LOGGING_DIR", value if eq else items[index + 1]
                    )
                logger.warning("%s is not used by transformers 5 and is ignored", flag)
                index += 1 if eq or not takes_value else 2
                continue
            logger.info("legacy flag %s read as %s", flag, new)
            item = new + (eq + value if eq else "")
        out.append(item)
        index += 1
    return out


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def apply_precision_fallback(training_args: Any) -> None:
    """`--fp16` without a CUDA GPU: warn and train in fp32 rather than fail inside accelerate."""
    if getattr(training_args, "fp16", False) and (training_args.use_cpu or not _cuda_available()):
        logger.warning("--fp16 needs a CUDA GPU and none is available: training in fp32 instead")
        training_args.fp16 = False
        training_args.mixed_precision = "no"
    if getattr(training_args, "fp16_full_eval", False) and (
        training_args.use_cpu or not _cuda_available()
    ):
        logger.warning(
            "--fp16_full_eval needs a CUDA GPU and none is available: evaluating in fp32 instead"
        )
        training_args.fp16_full_eval = False


# `--report_to` integrations whose package is optional, and what installs it.
REPORTING_PACKAGES: dict[str, tuple[tuple[str, ...], str]] = {
    "tensorboard": (("tensorboard", "tensorboardX"), "pip install 'sparseforge[tensorboard]'"),
    "wandb": (("wandb",), "pip install wandb"),
    "mlflow": (("mlflow",), "pip install mlflow"),
}


def check_reporting(training_args: Any) -> None:
    """`--report_to X` without X's package fails inside `Trainer.__init__`; say so before any work."""
    import importlib.util

    for name in training_args.report_to or []:
        packages, install = REPORTING_PACKAGES.get(name, ((), ""))
        if packages and not any(importlib.util.find_spec(package) for package in packages):
            raise SparseforgeError(
                f"--report_to {name} needs the {packages[0]} package, which is not installed: {install}"
            )


def _unknown_flags_message(parser: Any, remaining: Sequence[str], prog: str | None) -> str:
    """`--bogus 1`: name the unknown flag, a close known one, and where the list is."""
    import difflib

    flags = [item for item in remaining if item.startswith("-")] or list(remaining)
    known = [option for option in parser._option_string_actions if option.startswith("--")]
    close = difflib.get_close_matches(flags[0].split("=")[0], known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown argument {flags[0]}{hint}; `{prog or 'sparseforge train TASK'} --help` lists the valid flags"


def check_positive_sizes(training_args: Any) -> None:
    """Batch sizes and accumulation steps below 1 fail deep inside the DataLoader; say so first."""
    for name in (
        "per_device_train_batch_size",
        "per_device_eval_batch_size",
        "gradient_accumulation_steps",
    ):
        value = getattr(training_args, name, 1)
        if value is not None and value < 1:
            raise SparseforgeError(f"--{name} must be a positive integer, got {value}")


def parse_task_args(
    argv: Sequence[str], *dataclass_types: type, prog: str | None = None
) -> tuple[Any, ...]:
    """Parse `argv` into `dataclass_types` (+ TrainingArguments, returned last).

    Legacy flags are translated, a `.json` file as the only argument is read as the arguments,
    and `--fp16` falls back to fp32 on CPU. Bad flags exit through argparse (status 2).
    """
    from transformers import HfArgumentParser, TrainingArguments

    parser = HfArgumentParser((*dataclass_types, TrainingArguments), prog=prog)
    args = translate_legacy_flags(argv)
    if len(args) == 1 and args[0].endswith(".json"):
        try:
            parsed = parser.parse_json_file(json_file=os.path.abspath(args[0]))
        except ValueError as err:  # keys that are no argument
            raise SparseforgeError(f"{args[0]}: {str(err).splitlines()[0]}") from None
    else:
        *parsed, remaining = parser.parse_args_into_dataclasses(
            args=args, return_remaining_strings=True
        )
        if remaining:
            raise SparseforgeError(_unknown_flags_message(parser, remaining, prog))
    check_positive_sizes(parsed[-1])
    apply_precision_fallback(parsed[-1])
    check_reporting(parsed[-1])
    for item in parsed:
        check = getattr(item, "check", None)
        if callable(check):
            check()
    return tuple(parsed)


def last_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest `checkpoint-N` folder in `output_dir`, or None."""
    from transformers.trainer_utils import get_last_checkpoint

    if not os.path.isdir(output_dir):
        return None
    return get_last_checkpoint(str(output_dir))


def check_output_dir(training_args: Any, run_args: RecipeArguments) -> str | None:
    """Decide what `--output_dir` means, before training: refuse a file or an unwritable folder,
    an `--onnx_export_path` that holds someone's files, and a checkpoint that cannot be resumed;
    resume from the last sparseforge checkpoint (returned), refuse a non-empty folder without
    --overwrite_output_dir, or go on."""
    output_dir = Path(training_args.output_dir)
    _check_writable(output_dir, "--output_dir")
    if run_args.onnx_export_path:
        check_export_path(output_dir, run_args.onnx_export_path)
    resume = _resume_target(output_dir, training_args, run_args)
    if resume is not None:
        from sparseforge.transformers.trainer import check_checkpoint

        check_checkpoint(resume, needs_manager_state=bool(run_args.recipe))
    return resume


def _resume_target(output_dir: Path, training_args: Any, run_args: RecipeArguments) -> str | None:
    from sparseforge.transformers.trainer import CHECKPOINT_MARKER, is_sparseforge_checkpoint

    if training_args.resume_from_checkpoint:
        checkpoint = training_args.resume_from_checkpoint
        if checkpoint.lower() == "true":
            found = last_checkpoint(output_dir)
            if found is None:
                raise SparseforgeError(
                    f"--resume_from_checkpoint: no checkpoint-N folder in {output_dir}"
                )
            return found
        if not os.path.isdir(checkpoint):
            raise SparseforgeError(f"--resume_from_checkpoint: {checkpoint} is not a folder")
        return checkpoint
    if not output_dir.is_dir() or not any(output_dir.iterdir()):
        return None
    if run_args.overwrite_output_dir:
        check_overwrite(output_dir)
        return None
    if not training_args.do_train:
        return None
    found = last_checkpoint(output_dir)
    if found is not None and not is_sparseforge_checkpoint(found):
        raise SparseforgeError(
            f"--output_dir {output_dir} holds {Path(found).name}, which sparseforge did not write (no {CHECKPOINT_MARKER}, "
            f"or files added to it): it is not resumed automatically; pass --resume_from_checkpoint {found} to resume "
            "from it, or choose another --output_dir"
        )
    if found is not None:
        logger.info("resuming from %s (pass --overwrite_output_dir to start over)", found)
        return found
    raise SparseforgeError(
        f"--output_dir {output_dir} exists and is not empty; pass --overwrite_output_dir to train into it anyway"
    )


def _check_writable(path: Path, flag: str) -> None:
    """A file where a folder is wanted, or a folder this process cannot write into: an error now,
    not after training."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        what = "is a file" if existing == path else f"is inside {existing}, which is a file"
        raise SparseforgeError(f"{flag} {path} {what}; give a folder (new or existing)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SparseforgeError(
            f"{flag} {path}: cannot write into {existing} (permission denied); choose a writable folder"
        )


def check_export_path(output_dir: Path, export_path: str) -> None:
    """`--onnx_export_path` follows `sparseforge export onnx`'s rule (one function for both):
    an existing folder is replaced only when it is empty or a previous sparseforge deployment."""
    from sparseforge.export.deployment import resolve_output_dir

    _check_writable(Path(export_path), "--onnx_export_path")
    resolve_output_dir(
        output_dir, export_path, overwrite=False, flag="--onnx_export_path", overwrite_flag=None
    )


# What a training run writes into --output_dir (fnmatch patterns); a user's file of one of these
# names is never replaced, even with --overwrite_output_dir.
RUN_OUTPUTS = (
    "config.json",
    "generation_config.json",
    "model*.safetensors*",
    "pytorch_model*.bin*",
    "recipe.yaml",
    "training_args.bin",
    "trainer_state.json",
    "*results.json",
    "predict_results*.txt",
    "predictions.txt",
    "*predictions.json",
    "*null_odds.json",
    "tokenizer*",
    "vocab*",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "*.model",
    "chat_template*",
    "checkpoint-*",
    "runs",
    "compressed",
)
OUTPUT_MANIFEST = "sparseforge_output.json"


def user_entries(output_dir: Path) -> set[str]:
    """Entries of `output_dir` a sparseforge run did not write (per its manifest: the user's
    files when the run started, or everything not in the list of files the run finished with)."""
    if not output_dir.is_dir():
        return set()
    entries = {entry.name for entry in output_dir.iterdir()} - {OUTPUT_MANIFEST}
    try:
        manifest = json.loads((output_dir / OUTPUT_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return entries
    if not isinstance(manifest, dict) or manifest.get("generator") != "sparseforge":
        return entries
    if isinstance(manifest.get("files"), list):
        return entries - set(manifest["files"])
    return entries & set(manifest.get("user_files") or [])


def check_overwrite(output_dir: Path) -> None:
    """--overwrite_output_dir replaces only what sparseforge wrote (per the folder's manifest, or
    a checkpoint's marker): a user's file with a name the run writes (config.json, checkpoint-5,
    ...) is an error, not replaced."""
    from sparseforge.transformers.trainer import is_sparseforge_checkpoint

    clashes = sorted(
        name
        for name in user_entries(output_dir)
        if any(fnmatch.fnmatch(name, p) for p in RUN_OUTPUTS)
        and not is_sparseforge_checkpoint(output_dir / name)
    )
    if clashes:
        raise SparseforgeError(
            f"--output_dir {output_dir} holds {', '.join(clashes[:5])}{' ...' if len(clashes) > 5 else ''}, which "
            "sparseforge did not write and training would replace; --overwrite_output_dir replaces only a previous "
            "sparseforge run's files: move them or choose another --output_dir"
        )


def write_output_manifest(
    output_dir: str | os.PathLike, user_files: set[str], *, finished: bool
) -> None:
    """Record which entries of `output_dir` are the user's (at the start) and, when the run has
    finished, which ones it wrote, so a later --overwrite_output_dir knows what it may replace."""
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"generator": "sparseforge", "user_files": sorted(user_files)}
    if finished:
        manifest["files"] = sorted(
            {entry.name for entry in folder.iterdir()} - user_files - {OUTPUT_MANIFEST}
        )
    tmp = folder / (OUTPUT_MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, folder / OUTPUT_MANIFEST)


@contextlib.contextmanager
def new_output_dir_guard(output_dir: str | os.PathLike) -> Iterator[None]:
    """Remove `output_dir` again if it did not exist before and a SparseforgeError (a bad input,
    not a crash mid-training) ends the run: a failed command leaves no half-written folder."""
    path = Path(output_dir)
    existed = path.exists()
    try:
        yield
    except SparseforgeError:
        if not existed and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        raise


def resolve_model_and_recipe(
    model_args: ModelArguments, run_args: RecipeArguments
) -> tuple[str, Any]:
    """The model folder (a zoo: stub resolved) and the loaded, validated Recipe (or None), so a bad
    path or recipe is an error before any data is read or any folder written."""
    from sparseforge.recipe import Recipe
    from sparseforge.zoo import resolve

    model_path = str(resolve(model_args.model_name_or_path, "model"))
    if not os.path.isdir(model_path):
        raise SparseforgeError(
            f"--model_name_or_path {model_args.model_name_or_path}: no such model folder "
            "(sparseforge reads local folders and zoo: stubs; it does not download models)"
        )
    recipe = None
    if run_args.recipe:
        recipe = Recipe.load(str(resolve(run_args.recipe, "recipe")), run_args.recipe_args)
        if not recipe.modifiers:
            raise SparseforgeError(f"--recipe {run_args.recipe} defines no modifiers")
    elif run_args.recipe_args:
        raise SparseforgeError("--recipe_args needs --recipe")
    return model_path, recipe
