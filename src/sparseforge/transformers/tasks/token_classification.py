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
from sparseforge.transformers.arguments import (
    DataArguments,
    ModelArguments,
    RecipeArguments,
    resolve_model_and_recipe,
)
from sparseforge.transformers.data import (
    first_split,
    load_hub_dataset,
    read_data_file,
    require_columns,
    take_first,
)
from sparseforge.transformers.tasks import ner_utils
from sparseforge.transformers.tasks.task_utils import (
    check_one_shot_data,
    check_splits,
    dataset_from_rows,
    hold_out,
    load_tokenizer,
    main_process_writes,
    map_split,
    require_fast_tokenizer,
    run_cli,
    sequence_length,
)

logger = logging.getLogger(__name__)

TASK = "token-classification"
DEFAULT_MAX_SEQ_LENGTH = 256
TASK_NAMES = tuple(ner_utils.CONLL_COLUMNS)


@dataclass
class TokenClassificationDataArguments(DataArguments):
    """Data arguments of token classification (Hugging Face's / SparseML's run_ner)."""

    task_name: str = field(default="ner", metadata={"help": "ner, pos or chunk: which CoNLL column holds the labels"})
    text_column_name: str | None = field(default=None, metadata={"help": "Column of word lists (default: 'tokens', else the first)"})
    label_column_name: str | None = field(
        default=None, metadata={"help": "Column of tag lists (default: '<task_name>_tags', else the second)"}
    )
    label_all_tokens: bool = field(
        default=False, metadata={"help": "Label every subword piece of a word (B-X continues as I-X), not just the first"}
    )
    return_entity_level_metrics: bool = field(default=False, metadata={"help": "Also report precision/recall/F1 per entity type"})

    def check(self) -> None:
        super().check()
        self.task_name = self.task_name.lower()
        if self.task_name not in TASK_NAMES:
            raise SparseforgeError(f"unknown --task_name '{self.task_name}'; valid: {', '.join(TASK_NAMES)}")


# ----- data ------------------------------------------------------------------------------------------
def read_split(path: str, flag: str, cache_dir: str | None) -> Any:
    """A CoNLL column file (IOB1 -> IOB2) or a json/jsonl/csv/parquet file as a Dataset."""
    if ner_utils.is_conll_file(path):
        try:
            return dataset_from_rows(ner_utils.read_conll(path))
        except DataError as err:
            raise DataError(f"{flag}: {err}") from None
    return read_data_file(path, cache_dir=cache_dir, flag=flag)


def load_token_datasets(data_args: TokenClassificationDataArguments, cache_dir: str | None, seed: int) -> Any:
    import datasets

    files = {"train": data_args.train_file, "validation": data_args.validation_file, "test": data_args.test_file}
    files = {split: path for split, path in files.items() if path}
    if files:
        raw = datasets.DatasetDict({split: read_split(path, f"--{split}_file", cache_dir) for split, path in files.items()})
    elif data_args.dataset_name:
        raw = load_hub_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir)
    else:
        raise DataError("no data: pass --train_file / --validation_file (CoNLL column files or json) or --dataset_name")
    return hold_out(raw, data_args.validation_ratio, seed)


def columns_of(data_args: TokenClassificationDataArguments, columns: Sequence[str]) -> tuple[str, str]:
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
    for index, (words, tags) in enumerate(zip(dataset[text_column], dataset[label_column], strict=True), start=1):
        if not isinstance(words, list):
            kind = "nothing" if words is None else type(words).__name__
            raise DataError(f"{where}: example {index}: '{text_column}' holds {kind}, not a list of words")
        if not isinstance(tags, list):
            kind = "nothing" if tags is None else type(tags).__name__
            raise DataError(f"{where}: example {index}: '{label_column}' holds {kind}, not a list of tags (one per word)")
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

    def build(*args: Any) -> tuple[Any, dict[str, Any]]:
        trainer = build_trainer(*args)
        return trainer, {"predict_fn": trainer.predict_fn, "sequence_length": trainer.sequence_length}

    return run_cli(argv, task=TASK, data_arguments=TokenClassificationDataArguments, build=build)


def build_trainer(model_args: ModelArguments, data_args: TokenClassificationDataArguments, recipe_args: RecipeArguments, training_args: Any) -> Any:
    """Arguments and data -> a ready SparseTrainer whose evaluation reports entity-level F1."""
    from transformers import (
        AutoConfig,
        DataCollatorForTokenClassification,
        default_data_collator,
        set_seed,
    )

    from sparseforge.transformers.trainer import SparseTrainer, load_pretrained

    model_path, recipe = resolve_model_and_recipe(model_args, recipe_args)
    set_seed(training_args.seed)
    raw = load_token_datasets(data_args, model_args.cache_dir, training_args.seed)
    check_splits(raw, training_args)
    check_one_shot_data(raw, recipe, recipe_args.one_shot)
    text_column, label_column = columns_of(data_args, first_split(raw).column_names)
    for split in raw:
        require_columns(raw[split], [text_column], split=split, flag="--text_column_name")
        require_columns(raw[split], [label_column], split=split, flag="--label_column_name / --task_name")
        check_rows(raw[split], text_column, label_column, getattr(data_args, f"{split}_file", None) or f"{split} data")
        raw[split] = tags_as_names(raw[split], label_column)
    labels = ner_utils.label_list([raw[split] for split in raw if split != "test"] or list(raw.values()), label_column)

    tokenizer = load_tokenizer(model_args, model_path)
    require_fast_tokenizer(tokenizer, "token classification (word ids)")
    start_config = AutoConfig.from_pretrained(model_path)
    label_to_id = label_mapping(labels, start_config)
    id_to_label = {i: label for label, i in label_to_id.items()}
    # a head with another label count is replaced by load_pretrained
    model = load_pretrained(model_path, TASK, num_labels=len(labels), id2label=id_to_label, label2id=label_to_id)
    max_length = sequence_length(data_args.max_seq_length, DEFAULT_MAX_SEQ_LENGTH, tokenizer, model)
    ordered = [id_to_label[i] for i in range(len(id_to_label))]
    preprocess_kwargs = {
        "tokenizer": tokenizer,
        "text_column": text_column,
        "label_column": label_column,
        "label_to_id": label_to_id,
        "label_all_tokens": data_args.label_all_tokens,
        "max_seq_length": max_length,
        "padding": "max_length" if data_args.pad_to_max_length else False,
        "b_to_i_label": ner_utils.b_to_i(ordered),
    }
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples, "test": data_args.max_predict_samples}
    wanted = {"train": training_args.do_train or recipe_args.one_shot, "validation": training_args.do_eval, "test": training_args.do_predict}
    processed = {}
    for split, dataset in raw.items():
        if not wanted.get(split):
            continue
        dataset = take_first(dataset, limits[split])
        raw[split] = dataset
        processed[split] = map_split(
            dataset, ner_utils.tokenize_and_align_labels, training_args, data_args, split,
            remove_columns=dataset.column_names, fn_kwargs=preprocess_kwargs,
        )

    def compute_metrics(prediction: Any) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        return ner_utils.entity_metrics(logits, prediction.label_ids, id_to_label, data_args.return_entity_level_metrics)

    collator = default_data_collator if data_args.pad_to_max_length else DataCollatorForTokenClassification(tokenizer)
    trainer = SparseTrainer(
        model=model,
        args=training_args,
        train_dataset=processed.get("train"),
        eval_dataset=processed.get("validation"),
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=compute_metrics,
        recipe=recipe,
        teacher=model_args.distill_teacher,
    )
    trainer.sequence_length = max_length  # the ONNX export's input length
    trainer.predict_fn = None
    if "test" in processed:

        def predict(trainer: Any) -> None:
            output = trainer.predict(processed["test"], metric_key_prefix="predict")
            trainer.log_metrics("predict", output.metrics)
            trainer.save_metrics("predict", output.metrics)
            folder = main_process_writes(training_args)
            if folder is None:
                return
            predicted = np.asarray(output.predictions).argmax(-1)
            words = [list(w) for w in raw["test"][text_column]]
            encoded = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
            lines = []
            for index, row in enumerate(predicted):
                # one tag per word, from its first piece (words cut off by truncation get none)
                firsts: dict[int, int] = {}
                for position, word in enumerate(encoded.word_ids(batch_index=index)):
                    if word is not None and word not in firsts:
                        firsts[word] = position
                lines.append(" ".join(id_to_label[int(row[firsts[w]])] for w in sorted(firsts)))
            (folder / "predictions.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")

        trainer.predict_fn = predict
    return trainer
