"""`sparseforge train token-classification`: NER / POS / chunking with a recipe.

    sparseforge train token-classification --model_name_or_path MODEL --recipe RECIPE \\
        --train_file eng.train --validation_file eng.testa --task_name ner \\
        --do_train --do_eval --output_dir OUT

Local files are CoNLL column files (read directly, IOB1 tags converted to IOB2) or json / jsonl
rows of words and tags; `--dataset_name conll2003` loads through `datasets` when online. Labels
are aligned from words to subword tokens (`ner_utils.tokenize_and_align_labels`); evaluation
reports token accuracy and seqeval's entity-level precision / recall / F1, per entity type with
`--return_entity_level_metrics`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sparseforge.errors import DataError, SparseforgeError
from sparseforge.transformers.arguments import DataArguments
from sparseforge.transformers.data import (
    first_split,
    load_splits,
    read_data_file,
    require_columns,
    take_first,
)
from sparseforge.transformers.tasks import ner_utils, task_utils
from sparseforge.transformers.tasks.task_utils import TaskArgs, TaskRun

logger = logging.getLogger(__name__)

TASK = "token-classification"
DEFAULT_MAX_SEQ_LENGTH = 256
TASK_NAMES = tuple(ner_utils.CONLL_COLUMNS)


@dataclass
class TokenClassificationDataArguments(DataArguments):
    """Data arguments of token classification (Hugging Face's / SparseML's run_ner)."""

    task_name: str = field(
        default="ner", metadata={"help": "ner, pos or chunk: which CoNLL column holds the labels"}
    )
    text_column_name: str | None = field(
        default=None, metadata={"help": "Column of word lists (default: 'tokens', else the first)"}
    )
    label_column_name: str | None = field(
        default=None,
        metadata={"help": "Column of tag lists (default: '<task_name>_tags', else the second)"},
    )
    label_all_tokens: bool = field(
        default=False,
        metadata={
            "help": "Label every subword piece of a word (B-X continues as I-X), not just the first"
        },
    )
    return_entity_level_metrics: bool = field(
        default=False, metadata={"help": "Also report precision/recall/F1 per entity type"}
    )

    def check(self) -> None:
        super().check()
        self.task_name = self.task_name.lower()
        if self.task_name not in TASK_NAMES:
            raise SparseforgeError(
                f"unknown --task_name '{self.task_name}'; valid: {', '.join(TASK_NAMES)}"
            )


# ----- data ------------------------------------------------------------------------------------------
def read_split(path: str, flag: str, cache_dir: str | None) -> Any:
    """A CoNLL column file (IOB1 -> IOB2) or a json/jsonl/csv/parquet file as a Dataset."""
    if ner_utils.is_conll_file(path):
        try:
            return task_utils.dataset_from_rows(ner_utils.read_conll(path))
        except DataError as err:
            raise DataError(f"{flag}: {err}") from None
    return read_data_file(path, cache_dir=cache_dir, flag=flag)


def load_token_datasets(data_args: TokenClassificationDataArguments, cache_dir: str | None) -> Any:
    return load_splits(
        data_args,
        read_split,
        cache_dir,
        "pass --train_file / --validation_file (CoNLL column files or json) or --dataset_name",
    )


def columns_of(
    data_args: TokenClassificationDataArguments, columns: Sequence[str]
) -> tuple[str, str]:
    """(words column, tags column): the flags, else 'tokens' and '<task>_tags', else the first two."""
    text = data_args.text_column_name or ("tokens" if "tokens" in columns else columns[0])
    label = data_args.label_column_name
    if label is None:
        wanted = f"{data_args.task_name}_tags"
        others = [c for c in columns if c not in (text, "id")]
        label = wanted if wanted in columns else (others[0] if others else wanted)
    return text, label


def check_rows(dataset: Any, text_column: str, label_column: str, where: str) -> None:
    """Every example is a list of words and a list of as many tags; anything else is a one-line
    error naming the file and the example (1-based), before tokenization."""
    for index, (words, tags) in enumerate(
        zip(dataset[text_column], dataset[label_column], strict=True), start=1
    ):
        if not isinstance(words, list):
            kind = "nothing" if words is None else type(words).__name__
            raise DataError(
                f"{where}: example {index}: '{text_column}' holds {kind}, not a list of words"
            )
        if not isinstance(tags, list):
            kind = "nothing" if tags is None else type(tags).__name__
            raise DataError(
                f"{where}: example {index}: '{label_column}' holds {kind}, not a list of tags (one per word)"
            )
        if len(words) != len(tags):
            raise DataError(
                f"{where}: example {index} has {len(words)} words in '{text_column}' and {len(tags)} tags in "
                f"'{label_column}'; each word needs exactly one tag"
            )


def tags_as_names(dataset: Any, column: str) -> Any:
    """Integer tags with names (a `datasets` ClassLabel) become their names; others become str."""
    feature = dataset.features[column]
    names = getattr(getattr(feature, "feature", None), "names", None)

    def convert(batch: dict[str, list]) -> dict[str, list]:
        return {column: [[names[t] if names else str(t) for t in tags] for tags in batch[column]]}

    if names is None and all(isinstance(t, str) for tags in dataset[column][:50] for t in tags):
        return dataset
    return dataset.map(convert, batched=True)


def label_mapping(labels: list[str], model_config: Any) -> dict[str, int]:
    """Label -> id: the starting model's own mapping when it names exactly these labels (a
    fine-tuned model or teacher keeps its head), else the sorted label list."""
    config_map = dict(getattr(model_config, "label2id", None) or {})
    if config_map and set(config_map) == set(labels):
        return {label: int(i) for label, i in config_map.items()}
    return {label: i for i, label in enumerate(labels)}


# ----- the run ---------------------------------------------------------------------------------------
def main(argv: Sequence[str]) -> int:
    """Entry point of `sparseforge train token-classification` (the task-module contract)."""
    return task_utils.run_cli(
        argv, task=TASK, data_arguments=TokenClassificationDataArguments, build=build
    )


def load_checked_data(args: TaskArgs) -> tuple[Any, str, str, list[str]]:
    """The raw splits (rows checked, tags as names), the words and tags columns, and the labels."""
    data_args: TokenClassificationDataArguments = args.data
    raw = task_utils.prepare_splits(load_token_datasets(data_args, args.model.cache_dir), args)
    text_column, label_column = columns_of(data_args, first_split(raw).column_names)
    for split in raw:
        require_columns(raw[split], [text_column], split=split, flag="--text_column_name")
        require_columns(
            raw[split], [label_column], split=split, flag="--label_column_name / --task_name"
        )
        check_rows(
            raw[split],
            text_column,
            label_column,
            getattr(data_args, f"{split}_file", None) or f"{split} data",
        )
        raw[split] = tags_as_names(raw[split], label_column)
    labels = ner_utils.label_list(
        [raw[split] for split in raw if split != "test"] or list(raw.values()), label_column
    )
    return raw, text_column, label_column, labels


def build(args: TaskArgs) -> TaskRun:
    """Arguments and data -> the TaskRun: a SparseTrainer whose evaluation reports entity-level F1,
    and predictions written as predictions.txt (one tag per word)."""
    from transformers import AutoConfig, DataCollatorForTokenClassification

    from sparseforge.transformers.trainer import load_pretrained

    data_args: TokenClassificationDataArguments = args.data
    raw, text_column, label_column, labels = load_checked_data(args)
    tokenizer = task_utils.load_tokenizer(args.model, args.model_path)
    task_utils.require_fast_tokenizer(tokenizer, "token classification (word ids)")
    label_to_id = label_mapping(labels, AutoConfig.from_pretrained(args.model_path))
    id_to_label = {i: label for label, i in label_to_id.items()}
    # a head with another label count is replaced by load_pretrained
    model = load_pretrained(
        args.model_path, TASK, num_labels=len(labels), id2label=id_to_label, label2id=label_to_id
    )
    max_length = task_utils.sequence_length(
        data_args.max_seq_length, DEFAULT_MAX_SEQ_LENGTH, tokenizer, model
    )
    preprocess_kwargs = {
        "tokenizer": tokenizer,
        "text_column": text_column,
        "label_column": label_column,
        "label_to_id": label_to_id,
        "label_all_tokens": data_args.label_all_tokens,
        "max_seq_length": max_length,
        "padding": "max_length" if data_args.pad_to_max_length else False,
        "b_to_i_label": ner_utils.b_to_i([id_to_label[i] for i in range(len(id_to_label))]),
    }
    limits, wanted = task_utils.sample_limits(data_args), task_utils.wanted_splits(args)
    processed = {}
    for split, dataset in raw.items():
        if not wanted.get(split):
            continue
        raw[split] = dataset = take_first(dataset, limits[split])
        processed[split] = task_utils.map_split(
            dataset,
            ner_utils.tokenize_and_align_labels,
            args.training,
            data_args,
            split,
            remove_columns=dataset.column_names,
            fn_kwargs=preprocess_kwargs,
        )

    def compute_metrics(prediction: Any) -> dict[str, float]:
        logits = (
            prediction.predictions[0]
            if isinstance(prediction.predictions, tuple)
            else prediction.predictions
        )
        return ner_utils.entity_metrics(
            logits, prediction.label_ids, id_to_label, data_args.return_entity_level_metrics
        )

    def predict(trainer: Any, dataset: Any) -> None:
        output = task_utils.predict_and_log(trainer, dataset)
        folder = task_utils.main_process_writes(args.training)
        if folder is not None:
            words = [list(w) for w in raw["test"][text_column]]
            lines = word_tags(output.predictions, words, tokenizer, max_length, id_to_label)
            (folder / "predictions.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")

    collator = task_utils.padding_collator(args, tokenizer, DataCollatorForTokenClassification)
    return task_utils.task_run(
        args,
        processed,
        model,
        tokenizer,
        compute_metrics,
        max_length,
        predict=predict,
        collator=collator,
    )


def word_tags(
    logits: Any,
    words: list[list[str]],
    tokenizer: Any,
    max_length: int,
    id_to_label: dict[int, str],
) -> list[str]:
    """One line of tags per sentence, one tag per word, from the word's first piece (words cut
    off by truncation get none)."""
    predicted = np.asarray(logits).argmax(-1)
    encoded = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
    lines = []
    for index, row in enumerate(predicted):
        firsts: dict[int, int] = {}
        for position, word in enumerate(encoded.word_ids(batch_index=index)):
            if word is not None and word not in firsts:
                firsts[word] = position
        lines.append(" ".join(id_to_label[int(row[firsts[w]])] for w in sorted(firsts)))
    return lines
