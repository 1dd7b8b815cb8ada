"""`sparseforge train question-answering`: SQuAD v1.1 / v2.0 style extractive QA with a recipe.

    sparseforge train question-answering --model_name_or_path MODEL --distill_teacher TEACHER \\
        --train_file train-v1.1.json --validation_file dev-v1.1.json --recipe recipe.md \\
        --max_seq_length 384 --doc_stride 128 --do_train --do_eval --output_dir OUT

SparseML's `run_qa` flags work as written (`--evaluation_strategy`, `--onnx_export_path`, `--fp16`
on CPU...). Local files are SQuAD json (the official nested layout or flat rows, json or jsonl);
`--dataset_name squad` loads through `datasets` when online. Evaluation post-processes the
windows' logits into answers (`qa_utils.postprocess_predictions`), writes `predictions.json`
(plus `nbest_predictions.json`, and `null_odds.json` for v2) and reports SQuAD's exact match and
F1, computed locally.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sparseforge.errors import DataError, SparseforgeError
from sparseforge.transformers.arguments import DataArguments
from sparseforge.transformers.data import load_splits, read_data_file, take_first
from sparseforge.transformers.tasks import qa_utils, task_utils
from sparseforge.transformers.tasks.task_utils import TaskArgs, TaskRun

logger = logging.getLogger(__name__)

TASK = "question-answering"
DEFAULT_MAX_SEQ_LENGTH = 384
_OFFSET_COLUMNS = ["example_id", "offset_mapping"]


@dataclass
class QuestionAnsweringDataArguments(DataArguments):
    """Data arguments of extractive question answering (Hugging Face's / SparseML's run_qa)."""

    doc_stride: int = field(
        default=128,
        metadata={"help": "Tokens of overlap between the windows a long context is cut into"},
    )
    n_best_size: int = field(
        default=20,
        metadata={"help": "Start and end candidates kept per window when choosing answers"},
    )
    max_answer_length: int = field(default=30, metadata={"help": "Longest answer, in tokens"})
    version_2_with_negative: bool = field(
        default=False, metadata={"help": "SQuAD v2: some questions have no answer"}
    )
    null_score_diff_threshold: float = field(
        default=0.0,
        metadata={
            "help": "v2: answer '' when the null score beats the best span by more than this"
        },
    )

    def check(self) -> None:
        super().check()
        if self.doc_stride < 0:
            raise SparseforgeError(f"--doc_stride must be >= 0, got {self.doc_stride}")
        if self.max_seq_length is not None and self.doc_stride >= self.max_seq_length:
            raise SparseforgeError(
                f"--doc_stride {self.doc_stride} must be less than --max_seq_length {self.max_seq_length}"
            )
        if self.n_best_size < 1 or self.max_answer_length < 1:
            raise SparseforgeError("--n_best_size and --max_answer_length must be positive")


# ----- data ------------------------------------------------------------------------------------------
def read_split(path: str, flag: str, cache_dir: str | None) -> Any:
    """A local file as a Dataset of (id, title, context, question, answers) rows."""
    name = Path(path).name.lower()
    if name.endswith((".json", ".jsonl", ".json.gz", ".jsonl.gz")):
        try:
            rows = qa_utils.read_squad(path)
        except DataError as err:
            raise DataError(f"{flag}: {err}") from None
        qa_utils.check_answer_spans(rows, f"{flag} {path}")
        return task_utils.dataset_from_rows(rows)
    dataset = read_data_file(
        path, cache_dir=cache_dir, flag=flag
    )  # csv / parquet with the same columns
    missing = [c for c in ("id", "context", "question", "answers") if c not in dataset.column_names]
    if missing:
        raise DataError(
            f"{flag} {path} has no column {', '.join(missing)}; its columns are: {', '.join(dataset.column_names)}"
        )
    return dataset


def load_qa_datasets(data_args: QuestionAnsweringDataArguments, cache_dir: str | None) -> Any:
    """Local SQuAD files first, else `--dataset_name` through `datasets` (offline: a one-line error)."""
    return load_splits(
        data_args,
        read_split,
        cache_dir,
        "pass --train_file / --validation_file (SQuAD json) or --dataset_name",
    )


# ----- metrics ---------------------------------------------------------------------------------------
class SquadEvaluation:
    """The Trainer's `compute_metrics` for QA: windows' logits -> answers -> EM/F1 (+ predictions.json).

    It holds the evaluation examples and their windows with offsets; the Trainer evaluates the
    same windows in order, without the offset columns.
    """

    def __init__(
        self,
        examples: Any,
        features: Any,
        data_args: QuestionAnsweringDataArguments,
        training_args: Any,
        prefix: str = "",
    ):
        self.examples = examples
        self.features = features
        self.data_args = data_args
        self.training_args = training_args
        self.prefix = prefix

    def predictions(
        self, start_logits: np.ndarray, end_logits: np.ndarray
    ) -> tuple[dict, dict, dict]:
        return qa_utils.postprocess_predictions(
            self.examples,
            self.features,
            start_logits,
            end_logits,
            version_2_with_negative=self.data_args.version_2_with_negative,
            n_best_size=self.data_args.n_best_size,
            max_answer_length=self.data_args.max_answer_length,
            null_score_diff_threshold=self.data_args.null_score_diff_threshold,
        )

    def __call__(self, prediction: Any) -> dict[str, float]:
        start_logits, end_logits = prediction.predictions[:2]
        answers, nbest, null_diffs = self.predictions(start_logits, end_logits)
        folder = task_utils.main_process_writes(self.training_args)
        if folder is not None:
            qa_utils.write_predictions(folder, answers, nbest, null_diffs, prefix=self.prefix)
        has_references = any(len(example["answers"]["text"]) for example in self.examples)
        if not has_references and not self.data_args.version_2_with_negative:
            return {}
        return qa_utils.squad_metrics(
            answers, self.examples, version_2=self.data_args.version_2_with_negative
        )


# ----- the run -----------------------------------------------------------------------------------------
def main(argv: Sequence[str]) -> int:
    """Entry point of `sparseforge train question-answering` (the task-module contract)."""
    return task_utils.run_cli(
        argv, task=TASK, data_arguments=QuestionAnsweringDataArguments, build=build
    )


def build(args: TaskArgs) -> TaskRun:
    """Arguments and data -> the TaskRun: a SparseTrainer whose evaluation reports SQuAD EM/F1
    (and writes predictions.json), and test predictions post-processed with their own examples."""
    from sparseforge.transformers.trainer import load_pretrained

    data_args: QuestionAnsweringDataArguments = args.data
    raw = task_utils.prepare_splits(load_qa_datasets(data_args, args.model.cache_dir), args)
    tokenizer = task_utils.load_tokenizer(args.model, args.model_path)
    task_utils.require_fast_tokenizer(tokenizer, "question answering (answer offsets)")
    model = load_pretrained(args.model_path, TASK)
    max_length = task_utils.sequence_length(
        data_args.max_seq_length, DEFAULT_MAX_SEQ_LENGTH, tokenizer, model
    )
    if data_args.doc_stride >= max_length:
        raise SparseforgeError(
            f"--doc_stride {data_args.doc_stride} must be less than the sequence length {max_length}"
        )

    def features_of(split: str, limit: int | None, keep_offsets: bool) -> tuple[Any, Any]:
        examples = take_first(raw[split], limit)
        features = task_utils.map_split(
            examples,
            qa_utils.prepare_features,
            args.training,
            data_args,
            split,
            remove_columns=examples.column_names,
            fn_kwargs={
                "tokenizer": tokenizer,
                "max_seq_length": max_length,
                "doc_stride": data_args.doc_stride,
                "pad_to_max_length": data_args.pad_to_max_length,
                "keep_offsets": keep_offsets,
            },
        )
        return examples, features

    limits, wanted = task_utils.sample_limits(data_args), task_utils.wanted_splits(args)
    processed: dict[str, Any] = {}
    evaluations: dict[str, SquadEvaluation] = {}
    if wanted["train"]:
        processed["train"] = features_of("train", limits["train"], False)[1]
    for split, prefix in (("validation", ""), ("test", "predict")):
        if wanted[split]:
            examples, with_offsets = features_of(split, limits[split], True)
            evaluations[split] = SquadEvaluation(
                examples, with_offsets, data_args, args.training, prefix=prefix
            )
            processed[split] = with_offsets.remove_columns(_OFFSET_COLUMNS)

    def predict(trainer: Any, dataset: Any) -> None:
        # the test windows have their own examples: post-process them with their own evaluation
        task_utils.predict_and_log(trainer, dataset, evaluations["test"])

    return task_utils.task_run(
        args,
        processed,
        model,
        tokenizer,
        evaluations.get("validation"),
        max_length,
        predict=predict,
    )
