"""`sparseforge train masked-language-modeling`: upstream pruning on raw text, as oBERT did.

    sparseforge train masked-language-modeling --model_name_or_path MODEL --recipe RECIPE \\
        --train_file wiki.txt --train_file_2 books.txt --validation_split_percentage 5 \\
        --max_seq_length 128 --do_train --do_eval --output_dir OUT

Text comes from `.txt` files (one line per example or grouped), json/jsonl/csv/parquet files
(the `text` column, else the first), or `--dataset_name` (and `--dataset_name_2`, concatenated)
through `datasets` when online. Without a validation split, the first
`--validation_split_percentage` percent of train is held out. Texts are grouped into blocks of
`--max_seq_length` tokens unless `--line_by_line`; `DataCollatorForLanguageModeling` masks
`--mlm_probability` of the tokens. Evaluation reports the masked-token loss, accuracy and
perplexity = exp(loss).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sparseforge.errors import DataError, SparseforgeError
from sparseforge.transformers.arguments import DataArguments
from sparseforge.transformers.data import load_hub_dataset, read_data_file, read_lines, take_first
from sparseforge.transformers.tasks import task_utils
from sparseforge.transformers.tasks.task_utils import TaskArgs, TaskRun

logger = logging.getLogger(__name__)

TASK = "masked-language-modeling"
DEFAULT_MAX_SEQ_LENGTH = 512
TEXT_COLUMN = "text"


@dataclass
class MaskedLanguageModelingDataArguments(DataArguments):
    """Data arguments of masked-LM training (Hugging Face's / SparseML's run_mlm)."""

    dataset_name_2: str | None = field(
        default=None, metadata={"help": "A second `datasets` corpus, concatenated to the first"}
    )
    dataset_config_name_2: str | None = field(
        default=None, metadata={"help": "Configuration of --dataset_name_2"}
    )
    train_file_2: str | None = field(
        default=None, metadata={"help": "A second training file, concatenated to --train_file"}
    )
    text_column_name: str | None = field(
        default=None, metadata={"help": "Column holding the text (default: 'text', else the first)"}
    )
    line_by_line: bool = field(
        default=False,
        metadata={
            "help": "Each non-empty line is one example (else texts are grouped into blocks)"
        },
    )
    mlm_probability: float = field(
        default=0.15, metadata={"help": "Share of tokens masked for the loss"}
    )
    validation_split_percentage: int = field(
        default=5,
        metadata={
            "help": "Without a validation split: the percentage of train held out for evaluation"
        },
    )

    def check(self) -> None:
        super().check()
        if not 0.0 < self.mlm_probability < 1.0:
            raise SparseforgeError(
                f"--mlm_probability must be between 0 and 1, got {self.mlm_probability}"
            )
        if not 0 <= self.validation_split_percentage < 100:
            raise SparseforgeError(
                f"--validation_split_percentage must be in 0..99, got {self.validation_split_percentage}"
            )
        if self.dataset_name_2 and not self.dataset_name:
            raise SparseforgeError("--dataset_name_2 needs --dataset_name")
        if self.train_file_2 and not self.train_file:
            raise SparseforgeError("--train_file_2 needs --train_file")


# ----- data ------------------------------------------------------------------------------------------
def read_text(path: str, flag: str, cache_dir: str | None, text_column: str | None = None) -> Any:
    """A file as a Dataset with one `text` column: `.txt` lines (blank ones dropped), else the
    `text_column` (or `text`, or the first) column of a json/jsonl/csv/parquet file."""
    file = Path(path)
    if file.suffix.lower() in (".txt", ".text", ".raw"):
        rows = [{TEXT_COLUMN: line} for line in read_lines(path, flag) if line.strip()]
        if not rows:
            raise DataError(f"{flag} {path} holds no text")
        return task_utils.dataset_from_rows(rows)
    return only_text(
        read_data_file(path, cache_dir=cache_dir, flag=flag), text_column, f"{flag} {path}"
    )


def only_text(dataset: Any, text_column: str | None, where: str) -> Any:
    """Keep one text column, named `text`, so corpora with other columns can be concatenated."""
    columns = dataset.column_names
    column = text_column or (TEXT_COLUMN if TEXT_COLUMN in columns else columns[0])
    if column not in columns:
        raise DataError(
            f"{where} has no column '{column}' (--text_column_name); its columns are: {', '.join(columns)}"
        )
    dataset = dataset.remove_columns([c for c in columns if c != column])
    return dataset.rename_column(column, TEXT_COLUMN) if column != TEXT_COLUMN else dataset


def split_off_validation(train: Any, percentage: int) -> tuple[Any, Any]:
    """Hugging Face's run_mlm split: validation is the first `percentage`% of train, train the rest."""
    cut = len(train) * percentage // 100
    if cut < 1 or cut >= len(train):
        raise DataError(
            f"--validation_split_percentage {percentage} of {len(train)} training texts leaves an empty split"
        )
    return train.select(range(cut, len(train))), train.select(range(cut))


def load_mlm_datasets(data_args: MaskedLanguageModelingDataArguments, cache_dir: str | None) -> Any:
    """train (+ second corpus), validation (given, or held out of train), test."""
    import datasets

    raw: dict[str, Any] = {}
    if data_args.train_file or data_args.validation_file or data_args.test_file:
        for split in ("train", "validation", "test"):
            path = getattr(data_args, f"{split}_file")
            if path:
                raw[split] = read_text(
                    path, f"--{split}_file", cache_dir, data_args.text_column_name
                )
        if data_args.train_file_2:
            second = read_text(
                data_args.train_file_2, "--train_file_2", cache_dir, data_args.text_column_name
            )
            raw["train"] = datasets.concatenate_datasets([raw["train"], second])
    elif data_args.dataset_name:
        corpora = [(data_args.dataset_name, data_args.dataset_config_name)]
        if data_args.dataset_name_2:
            corpora.append((data_args.dataset_name_2, data_args.dataset_config_name_2))
        loaded = [load_hub_dataset(name, config, cache_dir) for name, config in corpora]
        for split in ("train", "validation", "test"):
            parts = [
                only_text(d[split], data_args.text_column_name, f"{name} {split}")
                for d, (name, _) in zip(loaded, corpora, strict=True)
                if split in d
            ]
            if parts:
                raw[split] = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    else:
        raise DataError("no data: pass --train_file (.txt, json, csv...) or --dataset_name")
    if (
        "validation" not in raw
        and "train" in raw
        and not data_args.validation_ratio
        and data_args.validation_split_percentage
    ):
        # run_mlm's default hold-out; --validation_ratio (a seeded random part) is prepare_splits'
        raw["train"], raw["validation"] = split_off_validation(
            raw["train"], data_args.validation_split_percentage
        )
    return datasets.DatasetDict(raw)


def tokenize_lines(
    examples: Mapping[str, list], tokenizer: Any, max_seq_length: int, padding: bool | str
) -> dict[str, list]:
    """`--line_by_line`: each line is one example, truncated to `max_seq_length`."""
    lines = [line for line in examples[TEXT_COLUMN] if line and not line.isspace()]
    return dict(
        tokenizer(
            lines,
            padding=padding,
            truncation=True,
            max_length=max_seq_length,
            return_special_tokens_mask=True,
        )
    )


def tokenize_texts(examples: Mapping[str, list], tokenizer: Any) -> dict[str, list]:
    """Grouped mode, first pass: whole texts, untruncated (the blocks are cut by `group_texts`)."""
    return dict(tokenizer(examples[TEXT_COLUMN], return_special_tokens_mask=True, verbose=False))


def group_texts(examples: Mapping[str, list], block_size: int) -> dict[str, list]:
    """Concatenate the batch's token lists and cut them into blocks of `block_size`; the
    remainder shorter than a block is dropped, as Hugging Face's run_mlm does."""
    concatenated = {key: list(itertools.chain.from_iterable(examples[key])) for key in examples}
    total = (len(next(iter(concatenated.values()))) // block_size) * block_size
    return {
        key: [values[i : i + block_size] for i in range(0, total, block_size)]
        for key, values in concatenated.items()
    }


# ----- metrics ---------------------------------------------------------------------------------------
def masked_accuracy(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy over the masked positions (labels != -100); predictions are token ids."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    keep = labels != -100
    return {"accuracy": float((predictions[keep] == labels[keep]).mean()) if keep.any() else 0.0}


def argmax_logits(logits: Any, labels: Any) -> Any:
    """`preprocess_logits_for_metrics`: keep token ids, not (batch, seq, vocab) logits, in memory."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def perplexity(loss: float) -> float:
    """exp(loss), infinite when it overflows."""
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")


def _perplexity_callback() -> Any:
    from transformers import TrainerCallback

    class PerplexityCallback(TrainerCallback):
        """Adds `<prefix>_perplexity` next to every `<prefix>_loss` an evaluation returns."""

        def on_evaluate(
            self,
            args: Any,
            state: Any,
            control: Any,
            metrics: dict[str, float] | None = None,
            **kwargs: Any,
        ) -> None:
            for key in [k for k in (metrics or {}) if k.endswith("_loss")]:
                metrics[key[: -len("loss")] + "perplexity"] = perplexity(metrics[key])  # type: ignore[index]

    return PerplexityCallback()


# ----- the run ---------------------------------------------------------------------------------------
def main(argv: Sequence[str]) -> int:
    """Entry point of `sparseforge train masked-language-modeling` (the task-module contract)."""
    return task_utils.run_cli(
        argv, task=TASK, data_arguments=MaskedLanguageModelingDataArguments, build=build
    )


def build(args: TaskArgs) -> TaskRun:
    """Arguments and text -> the TaskRun: a SparseTrainer whose evaluation reports masked-token
    accuracy and perplexity (no prediction files)."""
    from transformers import DataCollatorForLanguageModeling

    from sparseforge.transformers.trainer import load_pretrained

    data_args: MaskedLanguageModelingDataArguments = args.data
    raw = task_utils.prepare_splits(load_mlm_datasets(data_args, args.model.cache_dir), args)
    tokenizer = task_utils.load_tokenizer(args.model, args.model_path)
    if tokenizer.mask_token is None:
        raise SparseforgeError(
            f"the tokenizer of {args.model_path} has no mask token: it cannot train a masked language model"
        )
    model = load_pretrained(args.model_path, TASK)
    max_length = task_utils.sequence_length(
        data_args.max_seq_length, DEFAULT_MAX_SEQ_LENGTH, tokenizer, model
    )
    limits, wanted = task_utils.sample_limits(data_args), task_utils.wanted_splits(args)
    processed = {
        split: take_first(blocks_of(dataset, split, args, tokenizer, max_length), limits[split])
        for split, dataset in raw.items()
        if wanted.get(split) and split != "test"  # masked LM writes no predictions
    }

    def compute_metrics(prediction: Any) -> dict[str, float]:
        return masked_accuracy(prediction.predictions, prediction.label_ids)

    collator = DataCollatorForLanguageModeling(
        tokenizer=tokenizer, mlm_probability=data_args.mlm_probability
    )
    run = task_utils.task_run(
        args,
        processed,
        model,
        tokenizer,
        compute_metrics,
        max_length,
        collator=collator,
        preprocess_logits_for_metrics=argmax_logits,
    )
    run.trainer.add_callback(_perplexity_callback())
    return run


def blocks_of(dataset: Any, split: str, args: TaskArgs, tokenizer: Any, max_length: int) -> Any:
    """A split's text as training examples: lines (`--line_by_line`) or blocks of `max_length` tokens."""
    data_args: MaskedLanguageModelingDataArguments = args.data
    if data_args.line_by_line:
        padding = "max_length" if data_args.pad_to_max_length else False
        blocks = task_utils.map_split(
            dataset,
            tokenize_lines,
            args.training,
            data_args,
            split,
            remove_columns=dataset.column_names,
            fn_kwargs={"tokenizer": tokenizer, "max_seq_length": max_length, "padding": padding},
        )
    else:
        tokens = task_utils.map_split(
            dataset,
            tokenize_texts,
            args.training,
            data_args,
            split,
            remove_columns=dataset.column_names,
            fn_kwargs={"tokenizer": tokenizer},
        )
        blocks = task_utils.map_split(
            tokens,
            group_texts,
            args.training,
            data_args,
            split,
            fn_kwargs={"block_size": max_length},
        )
    if len(blocks) == 0:
        raise DataError(
            f"{split} text is shorter than one block of {max_length} tokens; lower --max_seq_length or use --line_by_line"
        )
    return blocks
