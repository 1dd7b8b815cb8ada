"""`sparseforge oneshot ...` and the Hugging Face half of `sparseforge.oneshot`.

`sparseforge.oneshot` works on a torch module and tokenized batches; this module turns a model
folder (or zoo: stub) into a model and tokenizer, and a csv/tsv/json/jsonl file (or rows of text)
into tokenized calibration batches, one sample per batch, without padding.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from sparseforge.errors import DataError, SparseforgeError
from sparseforge.oneshot import MODEL_INPUT_KEYS, Batch


def _load_folder(path: str) -> torch.nn.Module:
    """A model folder: through `load_model` when sparseforge saved it (recipe structure), else its
    config's architecture class (any Hugging Face model whose Linear layers oneshot can reach)."""
    import transformers

    from sparseforge.transformers.loading import RECIPE_FILE, load_model
    from sparseforge.transformers.trainer import task_of

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise SparseforgeError(f"--model_path {path}: not a model folder (no config.json)")
    config = transformers.AutoConfig.from_pretrained(path)
    architectures = config.architectures or []
    task = next((task_of(name) for name in architectures if task_of(name)), None)
    if (folder / RECIPE_FILE).is_file() and task:
        return load_model(path, task)
    model_class = getattr(transformers, architectures[0], None) if architectures else None
    model_class = model_class or transformers.AutoModel
    try:
        return model_class.from_pretrained(path).eval()
    except (OSError, ValueError) as err:
        raise SparseforgeError(
            f"cannot load a model from {path}: {str(err).splitlines()[0]}"
        ) from None


def recipe_to_save(model: Any, recipe: Any) -> Any:
    """What the output's recipe.yaml holds: the recipe a sparseforge model folder was saved with
    (its structure, e.g. QAT, must be rebuilt on reload), then this one-shot recipe."""
    if isinstance(model, torch.nn.Module):
        return recipe
    from sparseforge.transformers.trainer import combine_recipes, saved_recipe

    return combine_recipes(saved_recipe(str(model)), recipe)


def resolve_model(model: Any, tokenizer: Any = None) -> tuple[torch.nn.Module, Any]:
    """(model, tokenizer) from a module or a model folder (its tokenizer if none given); zoo:
    stubs are resolved by `sparseforge.oneshot.oneshot`, the public edge."""
    if isinstance(model, torch.nn.Module):
        return model, tokenizer
    path = str(model)
    loaded = _load_folder(path)
    if tokenizer is None:
        import transformers

        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError):
            tokenizer = None  # tokenized data still works; text data says what is missing
    return loaded, tokenizer


def _texts(dataset: Any, text_column: str, limit: int) -> list[str]:
    """The first `limit` non-empty texts of a file, a `datasets.Dataset`, rows or strings."""
    from sparseforge.transformers.data import read_data_file, require_columns, take_first

    if isinstance(dataset, (str, os.PathLike)):
        dataset = _read_file(Path(dataset), read_data_file)
    if hasattr(dataset, "column_names"):
        if len(dataset) == 0:
            raise DataError("the calibration dataset holds no examples")
        require_columns(dataset, [text_column], split="calibration", flag="--text_column")
        rows = take_first(dataset, limit * 2)[text_column]
    elif isinstance(dataset, Sequence):
        rows = [
            row[text_column] if isinstance(row, Mapping) else row for row in dataset[: limit * 2]
        ]
        if rows and isinstance(dataset[0], Mapping) and text_column not in dataset[0]:
            raise DataError(
                f"calibration rows have no column '{text_column}' (--text_column); they have: {', '.join(dataset[0])}"
            )
    else:
        raise DataError(f"cannot read calibration data from a {type(dataset).__name__}")
    texts = [str(text) for text in rows if isinstance(text, str) and text.strip()]
    return texts[:limit]


def _read_file(path: Path, reader: Any) -> Any:
    try:
        return reader(path, flag="--dataset")
    except DataError:
        # a csv/tsv with only its header row: say so rather than the reader's own words
        if path.is_file() and path.suffix.lower() in (".csv", ".tsv"):
            lines = [
                line
                for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
                if line.strip()
            ]
            if len(lines) <= 1:
                raise DataError(f"--dataset {path} holds no examples (only a header row)") from None
        raise


def text_batches(
    dataset: Any, tokenizer: Any, text_column: str, num_samples: int, max_seq_length: int
) -> list[Batch]:
    """Tokenized calibration batches (one sample each, truncated to `max_seq_length`)."""
    if tokenizer is None:
        raise DataError(
            "text calibration data needs a tokenizer: pass tokenizer=, a model folder that has one, or a tokenized dataset"
        )
    texts = _texts(dataset, text_column, num_samples)
    if not texts:
        raise DataError(f"the calibration dataset has no non-empty text in column '{text_column}'")
    batches = []
    for text in texts:
        encoded = tokenizer(text, truncation=True, max_length=max_seq_length, return_tensors="pt")
        batches.append({key: encoded[key] for key in MODEL_INPUT_KEYS if key in encoded})
    return batches


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparseforge oneshot",
        description="Compress a trained model without training: SparseGPT / Wanda / one-shot magnitude "
        "or OBS pruning and post-training quantization from a recipe and unlabeled calibration text.",
    )
    parser.add_argument(
        "--model_path",
        "--model-path",
        required=True,
        help="model folder (config.json, weights, tokenizer) or zoo: stub",
    )
    parser.add_argument(
        "--recipe", required=True, help="recipe file (.yaml/.md), recipe text, or zoo: stub"
    )
    parser.add_argument(
        "--recipe_args",
        "--recipe-args",
        default=None,
        help="recipe variable overrides: JSON or k=v,k2=v2",
    )
    parser.add_argument(
        "--dataset",
        default=None,
        help="calibration data: .csv/.tsv/.json/.jsonl with a text column",
    )
    parser.add_argument(
        "--text_column",
        "--text-column",
        default="text",
        help="column holding the text (default: text)",
    )
    parser.add_argument(
        "--num_calibration_samples",
        "--num-calibration-samples",
        type=int,
        default=512,
        help="samples to calibrate on (default 512; the first ones of the file)",
    )
    parser.add_argument(
        "--max_seq_length",
        "--max-seq-length",
        type=int,
        default=384,
        help="tokens per sample at most (default 384)",
    )
    parser.add_argument(
        "--output_dir",
        "--output-dir",
        required=True,
        help="new (or empty) folder for the compressed model",
    )
    parser.add_argument(
        "--save_compressed",
        "--save-compressed",
        action="store_true",
        help="write weights in the compressed-tensors format (needs the compressed-tensors package)",
    )
    return parser


def cli_main(argv: Sequence[str]) -> int:
    """Run `sparseforge oneshot ...`; returns the exit code."""
    from sparseforge.oneshot import oneshot

    args = build_parser().parse_args(list(argv))
    result = oneshot(  # resolves zoo: stubs of the model and the recipe
        model=args.model_path,
        recipe=args.recipe,
        dataset=args.dataset,
        text_column=args.text_column,
        num_calibration_samples=args.num_calibration_samples,
        max_seq_length=args.max_seq_length,
        output_dir=args.output_dir,
        save_compressed=args.save_compressed,
        recipe_args=args.recipe_args,
    )
    report = result.report
    summary = {
        key: report[key]
        for key in ("modifiers", "calibration_samples", "seconds", "peak_memory_mb")
        if key in report
    }
    print(f"sparseforge oneshot: saved {result.output_dir}: {json.dumps(summary)}")
    if result.training_recipe is not None:
        recipe_path = Path(result.output_dir) / "training_recipe.yaml"
        print(
            f"the recipe's training stages are in {recipe_path}; continue with: sparseforge train TASK "
            f"--model_name_or_path {result.output_dir} --recipe {recipe_path} --distill_teacher {args.model_path} ..."
        )
    return 0
