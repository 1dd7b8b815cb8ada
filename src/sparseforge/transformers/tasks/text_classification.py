"""`sparseforge train text-classification`: GLUE tasks, imdb, or your own files, with a recipe.

    sparseforge train text-classification --model_name_or_path MODEL --task_name sst2 \\
        --train_file train.tsv --validation_file dev.tsv --recipe recipe.yaml \\
        --distill_teacher TEACHER --output_dir OUT --do_train --do_eval

Single inputs or pairs (`--input_column_names a[,b]`, else the task's or the data's), integer or
string labels, regression (float labels, e.g. stsb), and multi-label data (a list of labels per
example; predicted where sigmoid > 0.3). Everything that can be checked - arguments, recipe,
files, columns, teacher - is checked before training; nothing is left in a new --output_dir when
it fails.
"""

from __future__ import annotations

import ast
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sparseforge.errors import DataError, SparseforgeError
from sparseforge.transformers.arguments import DataArguments
from sparseforge.transformers.data import (
    GLUE_TASK_COLUMNS,
    GLUE_TASK_LABELS,
    first_split,
    load_raw_datasets,
    require_columns,
    take_first,
)
from sparseforge.transformers.tasks import task_utils
from sparseforge.transformers.tasks.task_utils import TaskArgs, TaskRun

logger = logging.getLogger(__name__)

TASK = "text-classification"
DEFAULT_MAX_SEQ_LENGTH = 128
_ID_COLUMNS = {"idx", "id", "index", "guid"}


@dataclass
class TextClassificationDataArguments(DataArguments):
    """Data arguments of text classification: the GLUE task and which columns hold what."""

    task_name: str | None = field(
        default=None,
        metadata={
            "help": f"GLUE task or imdb: {', '.join(GLUE_TASK_COLUMNS)} (sets columns, labels, metrics)"
        },
    )
    input_column_names: str | None = field(
        default=None,
        metadata={
            "help": "Input text column(s): 'text' or 'sentence1,sentence2' (default: the task's or guessed)"
        },
    )
    label_column_name: str = field(
        default="label", metadata={"help": "Column holding the label(s)"}
    )

    def check(self) -> None:
        super().check()
        if self.task_name is not None:
            self.task_name = self.task_name.lower().replace("-", "")
            if self.task_name not in GLUE_TASK_COLUMNS:
                raise SparseforgeError(
                    f"unknown --task_name '{self.task_name}'; valid: {', '.join(GLUE_TASK_COLUMNS)}"
                )
        if self.input_column_names is not None:
            names = [name.strip() for name in self.input_column_names.split(",") if name.strip()]
            if not 1 <= len(names) <= 2:
                raise SparseforgeError(
                    "--input_column_names takes one column or two separated by a comma"
                )


# ----- columns and labels ------------------------------------------------------------------------
def input_columns(
    data_args: TextClassificationDataArguments, columns: Sequence[str]
) -> tuple[str, str | None]:
    """(first, second or None): the flag, else the GLUE task's, else sentence1/2, else the first
    one or two non-label, non-id columns."""
    if data_args.input_column_names:
        names = [name.strip() for name in data_args.input_column_names.split(",") if name.strip()]
        return names[0], names[1] if len(names) > 1 else None
    if data_args.task_name:
        return GLUE_TASK_COLUMNS[data_args.task_name]
    candidates = [
        c for c in columns if c != data_args.label_column_name and c.lower() not in _ID_COLUMNS
    ]
    if "sentence1" in candidates and "sentence2" in candidates:
        return "sentence1", "sentence2"
    if not candidates:
        raise DataError(
            f"no input text column besides the label; columns are: {', '.join(columns)}"
        )
    return candidates[0], candidates[1] if len(candidates) > 1 else None


def _as_label_list(value: Any) -> list[Any] | None:
    """A multi-label value as a list: a list, or text like '[1, 3]' / '1,3' (csv files)."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                return None
            return list(parsed) if isinstance(parsed, (list, tuple)) else None
        if "," in text:
            return [item.strip() for item in text.split(",") if item.strip()]
    return None


@dataclass
class LabelScheme:
    """How labels are read: names in id order (None for regression) and the problem type."""

    names: list[str] | None
    problem_type: str  # single_label_classification | multi_label_classification | regression
    to_id: dict[Any, int] = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return 1 if self.names is None else len(self.names)

    def encode(self, value: Any) -> Any:
        if self.problem_type == "regression":
            return float(value)
        if self.problem_type == "multi_label_classification":
            vector = [0.0] * self.num_labels
            items = _as_label_list(value)
            for item in items if items is not None else [value]:
                vector[self.to_id[_norm(item)]] = 1.0
            return vector
        return self.to_id[_norm(value)]


def _norm(value: Any) -> Any:
    """Label values compared across files: '1' and 1 are the same label."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value.strip() if isinstance(value, str) else value


def label_scheme(raw: Any, data_args: TextClassificationDataArguments) -> LabelScheme:
    """Read the labels of the labelled splits: GLUE's names for a GLUE task, else the sorted
    distinct values; lists mean multi-label, non-integer floats (or stsb) regression."""
    column = data_args.label_column_name
    task = data_args.task_name
    values: list[Any] = []
    for split in ("train", "validation"):
        if split in raw:
            values.extend(raw[split][column])
    values = [v for v in values if v is not None]
    if not values:
        raise DataError(f"label column '{column}' is empty")
    lists = [_as_label_list(v) for v in values]
    if any(item is not None for item in lists):  # one list makes the column multi-label
        lists = [
            item if item is not None else [value] for item, value in zip(lists, values, strict=True)
        ]
        distinct = sorted(
            {_norm(x) for item in lists for x in item}, key=lambda x: (isinstance(x, str), x)
        )
        if all(isinstance(x, int) for x in distinct):
            distinct = list(range(max(distinct) + 1))
        return LabelScheme(
            [str(x) for x in distinct],
            "multi_label_classification",
            {x: i for i, x in enumerate(distinct)},
        )
    if task == "stsb" or (
        all(isinstance(v, (int, float)) for v in values)
        and any(isinstance(v, float) and not float(v).is_integer() for v in values)
    ):
        return LabelScheme(None, "regression")
    distinct = sorted({_norm(v) for v in values}, key=lambda x: (isinstance(x, str), x))
    glue_names = GLUE_TASK_LABELS.get(task or "")
    if glue_names:
        to_id: dict[Any, int] = {name: i for i, name in enumerate(glue_names)}
        to_id.update({i: i for i in range(len(glue_names))})
        unknown = [v for v in distinct if v not in to_id and v != -1]
        if unknown:
            raise DataError(
                f"--task_name {task}: labels {unknown[:5]} are not {task} labels ({', '.join(glue_names)} or 0..{len(glue_names) - 1})"
            )
        return LabelScheme(list(glue_names), "single_label_classification", to_id)
    if all(isinstance(v, int) for v in distinct) and distinct and min(distinct) >= 0:
        distinct = list(range(max(distinct) + 1))
    return LabelScheme(
        [str(v) for v in distinct],
        "single_label_classification",
        {v: i for i, v in enumerate(distinct)},
    )


def _label_problem(value: Any, scheme: LabelScheme) -> str | None:
    """Why `value` cannot be encoded by `scheme` (None when it can)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return "the label is empty (every training and evaluation example needs one)"
    if scheme.problem_type == "regression":
        try:
            number = float(value)
        except (TypeError, ValueError):
            return f"label {value!r} is not a number (regression needs numeric labels)"
        return (
            None
            if math.isfinite(number)
            else f"label {value!r} is not a finite number (regression needs finite numbers)"
        )
    items = _as_label_list(value) if scheme.problem_type == "multi_label_classification" else None
    unknown = [
        item
        for item in (items if items is not None else [value])
        if _norm(item) not in scheme.to_id and _norm(item) != -1
    ]
    if unknown:
        valid = ", ".join(scheme.names[:10]) + (" ..." if len(scheme.names) > 10 else "")  # type: ignore[index]
        return f"label {unknown[0]!r} is not one of the training and validation data's labels ({valid})"
    return None


def check_labels(raw: Any, scheme: LabelScheme, data_args: TextClassificationDataArguments) -> None:
    """Every label of every split can be encoded: one line naming the file, the example (1-based)
    and what is valid, before anything is tokenized. Test files may leave labels empty."""
    column = data_args.label_column_name
    files = {
        "train": data_args.train_file,
        "validation": data_args.validation_file,
        "test": data_args.test_file,
    }
    for split, dataset in raw.items():
        if column not in dataset.column_names:
            continue
        for index, value in enumerate(dataset[column], start=1):
            if split == "test" and (value is None or value == ""):
                continue
            problem = _label_problem(value, scheme)
            if problem:
                where = files.get(split) or f"{split} data"
                raise DataError(f"{where}: example {index}, column '{column}': {problem}")


# ----- the run -----------------------------------------------------------------------------------
def main(argv: Sequence[str]) -> int:
    """Entry point of `sparseforge train text-classification` (the task-module contract)."""
    return task_utils.run_cli(
        argv, task=TASK, data_arguments=TextClassificationDataArguments, build=build
    )


def load_checked_data(args: TaskArgs) -> tuple[Any, tuple[str, str | None], LabelScheme]:
    """The raw splits (checked), the input columns and the label scheme, before any tokenizing."""
    data_args: TextClassificationDataArguments = args.data
    raw = load_raw_datasets(
        data_args, task_name=data_args.task_name, cache_dir=args.model.cache_dir
    )
    raw = task_utils.prepare_splits(
        raw, args, sources="--train_file, --dataset_name or --task_name"
    )
    first, second = input_columns(data_args, first_split(raw).column_names)
    wanted = [first] + ([second] if second else [])
    for split in raw:
        require_columns(
            raw[split],
            wanted,
            split=split,
            flag="--input_column_names"
            if data_args.input_column_names
            else "the task's input columns",
        )
        if split != "test":
            require_columns(
                raw[split], [data_args.label_column_name], split=split, flag="--label_column_name"
            )
    scheme = label_scheme(raw, data_args)
    check_labels(raw, scheme, data_args)
    return raw, (first, second), scheme


def build(args: TaskArgs) -> TaskRun:
    """Arguments and data -> the TaskRun: a SparseTrainer, the tokenized splits, the GLUE / label
    metrics, mnli's mismatched set as an extra evaluation, predictions as predict_results.txt."""
    from sparseforge.transformers.metrics import compute_metrics_fn
    from sparseforge.transformers.trainer import load_pretrained

    data_args: TextClassificationDataArguments = args.data
    raw, columns, scheme = load_checked_data(args)
    config_kwargs: dict[str, Any] = {
        "num_labels": scheme.num_labels,
        "problem_type": scheme.problem_type,
    }
    if scheme.names is not None:
        config_kwargs["id2label"] = dict(enumerate(scheme.names))
        config_kwargs["label2id"] = {name: i for i, name in enumerate(scheme.names)}
    tokenizer = task_utils.load_tokenizer(args.model, args.model_path)
    model = load_pretrained(args.model_path, TASK, **config_kwargs)
    max_length = min(data_args.max_seq_length or DEFAULT_MAX_SEQ_LENGTH, tokenizer.model_max_length)
    processed = tokenize_splits(raw, args, columns, scheme, tokenizer, max_length)
    compute_metrics = compute_metrics_fn(
        data_args.task_name,
        is_regression=scheme.problem_type == "regression",
        is_multi_label=scheme.problem_type == "multi_label_classification",
    )
    extra = {}
    if (
        data_args.task_name == "mnli"
        and "validation_mismatched" in processed
        and args.training.do_eval
    ):
        extra["mm"] = processed["validation_mismatched"]
    length = data_args.max_seq_length or DEFAULT_MAX_SEQ_LENGTH  # the ONNX export's input length
    return task_utils.task_run(
        args,
        processed,
        model,
        tokenizer,
        compute_metrics,
        length,
        extra_eval=extra,
        predict=lambda trainer, dataset: write_predictions(trainer, dataset, scheme),
    )


def tokenize_splits(
    raw: Any,
    args: TaskArgs,
    columns: tuple[str, str | None],
    scheme: LabelScheme,
    tokenizer: Any,
    max_length: int,
) -> dict[str, Any]:
    """The splits the run uses (and mnli's extra validation sets), tokenized with encoded labels."""
    import datasets

    data_args: TextClassificationDataArguments = args.data
    first, second = columns
    padding = "max_length" if data_args.pad_to_max_length else False

    def preprocess(batch: dict[str, list[Any]]) -> dict[str, Any]:
        texts = (batch[first],) if second is None else (batch[first], batch[second])
        texts = tuple([str(t) if t is not None else "" for t in column] for column in texts)
        encoded = tokenizer(*texts, padding=padding, max_length=max_length, truncation=True)
        if data_args.label_column_name in batch:
            labels = batch[data_args.label_column_name]
            encoded["labels"] = [scheme.encode(v) if _norm(v) != -1 else -1 for v in labels]
        return encoded

    limits, wanted = task_utils.sample_limits(data_args), task_utils.wanted_splits(args)
    label_feature = {
        "multi_label_classification": datasets.Sequence(datasets.Value("float32")),
        "regression": datasets.Value("float32"),
    }.get(scheme.problem_type)
    processed = {}
    for split, dataset in raw.items():
        if not wanted.get(split, split.startswith("validation_") and args.training.do_eval):
            continue
        dataset = take_first(dataset, limits.get(split, data_args.max_eval_samples))
        processed[split] = task_utils.map_split(
            dataset,
            preprocess,
            args.training,
            data_args,
            split,
            remove_columns=dataset.column_names,
        )
        # `map` keeps the raw column's type when the output reuses its name ("labels"): set it.
        if label_feature is not None and "labels" in processed[split].column_names:
            processed[split] = processed[split].cast_column("labels", label_feature)
    if "test" in processed and "labels" in processed["test"].column_names:
        processed["test"] = processed["test"].remove_columns("labels")
    return processed


def write_predictions(trainer: Any, dataset: Any, scheme: LabelScheme) -> None:
    """`predict_results.txt`: index and predicted label per test example."""
    from pathlib import Path

    logits = trainer.predict(dataset).predictions
    if isinstance(logits, tuple):
        logits = logits[0]
    if not trainer.args.should_save:
        return
    lines = ["index\tprediction"]
    if scheme.problem_type == "regression":
        lines += [f"{i}\t{v:.4f}" for i, v in enumerate(np.asarray(logits).reshape(-1))]
    elif scheme.problem_type == "multi_label_classification":
        from sparseforge.transformers.metrics import MULTI_LABEL_THRESHOLD

        probabilities = 1 / (1 + np.exp(-np.asarray(logits, dtype=np.float64)))
        for i, row in enumerate(probabilities):
            names = [scheme.names[j] for j in np.flatnonzero(row > MULTI_LABEL_THRESHOLD)]  # type: ignore[index]
            lines.append(f"{i}\t{','.join(names)}")
    else:
        lines += [
            f"{i}\t{scheme.names[int(p)]}" for i, p in enumerate(np.asarray(logits).argmax(-1))
        ]  # type: ignore[index]
    Path(trainer.args.output_dir, "predict_results.txt").write_text(
        "\n".join(lines) + "\n", encoding="utf-8"
    )
