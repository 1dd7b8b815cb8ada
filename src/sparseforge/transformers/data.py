"""Reading task data: local files through `datasets`, GLUE's conventions, and the usual cuts.

- Local files: csv, tsv (GLUE's own tsv layouts, quotes taken literally), json / jsonl (also
  gzipped, and `{"data": [...]}` files), parquet. A missing or unreadable file is a `DataError`.
- Hub datasets (`--dataset_name`, `--task_name`) go through `datasets.load_dataset`; offline this
  is a one-line `DataError` saying to pass local files.
- `hold_out` applies `--validation_ratio`; `take_first` applies `--max_*_samples`.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sparseforge.errors import DataError

logger = logging.getLogger(__name__)

# GLUE tasks (and imdb): the input columns of the `datasets` version of each task.
GLUE_TASK_COLUMNS: dict[str, tuple[str, str | None]] = {
    "cola": ("sentence", None),
    "mnli": ("premise", "hypothesis"),
    "mrpc": ("sentence1", "sentence2"),
    "qnli": ("question", "sentence"),
    "qqp": ("question1", "question2"),
    "rte": ("sentence1", "sentence2"),
    "sst2": ("sentence", None),
    "stsb": ("sentence1", "sentence2"),
    "wnli": ("sentence1", "sentence2"),
    "imdb": ("text", None),
}
# Label names in id order (None: a regression task).
GLUE_TASK_LABELS: dict[str, list[str] | None] = {
    "cola": ["unacceptable", "acceptable"],
    "mnli": ["entailment", "neutral", "contradiction"],
    "mrpc": ["not_equivalent", "equivalent"],
    "qnli": ["entailment", "not_entailment"],
    "qqp": ["not_duplicate", "duplicate"],
    "rte": ["entailment", "not_entailment"],
    "sst2": ["negative", "positive"],
    "stsb": None,
    "wnli": ["not_entailment", "entailment"],
    "imdb": ["neg", "pos"],
}
# Column names of GLUE's original tsv files -> the `datasets` names above.
GLUE_TSV_RENAMES: dict[str, dict[str, str]] = {
    "mnli": {"sentence1": "premise", "sentence2": "hypothesis", "gold_label": "label"},
    "mrpc": {"#1 String": "sentence1", "#2 String": "sentence2", "Quality": "label"},
    "qqp": {"is_duplicate": "label"},
    "stsb": {"score": "label"},
}
# GLUE tsv files written without a header row.
GLUE_HEADERLESS_COLUMNS: dict[str, list[str]] = {
    "cola": ["source", "label", "original_label", "sentence"],
}
# Hub names used when only --task_name is given.
HUB_NAMES: dict[str, tuple[str, str | None]] = {
    task: ("nyu-mll/glue", task) for task in GLUE_TASK_COLUMNS
}
HUB_NAMES["imdb"] = ("stanfordnlp/imdb", None)

SUPPORTED_EXTENSIONS = (".csv", ".tsv", ".json", ".jsonl", ".parquet", ".json.gz", ".jsonl.gz")


def _extension(path: Path) -> str:
    name = path.name.lower()
    for ext in sorted(SUPPORTED_EXTENSIONS, key=len, reverse=True):
        if name.endswith(ext):
            return ext
    return path.suffix.lower()


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


def _tsv_has_header(path: Path, task_name: str | None) -> bool:
    if task_name not in GLUE_HEADERLESS_COLUMNS:
        return True
    with path.open(encoding="utf-8") as handle:
        first = handle.readline().rstrip("\r\n").split("\t")
    return "sentence" in first or "label" in first


def _reader_for(
    path: Path, ext: str, task_name: str | None, flag: str
) -> tuple[str, dict[str, Any]]:
    """The `datasets` builder and its options for a file extension, kept apart from loading so
    an unsupported format is refused before `datasets` is touched."""
    if ext == ".csv":
        return "csv", {}
    if ext == ".tsv":
        kwargs: dict[str, Any] = {"delimiter": "\t", "quoting": csv.QUOTE_NONE, "na_filter": False}
        if not _tsv_has_header(path, task_name):
            kwargs["column_names"] = GLUE_HEADERLESS_COLUMNS[task_name]  # type: ignore[index]
        return "csv", kwargs
    if ext in (".json", ".jsonl", ".json.gz", ".jsonl.gz"):
        return "json", {}
    if ext == ".parquet":
        return "parquet", {}
    raise DataError(
        f"{flag} {path}: unsupported format '{ext}'; use one of {', '.join(SUPPORTED_EXTENSIONS)}"
    )


def _load_quietly(
    builder: str, path: Path, ext: str, kwargs: dict[str, Any], cache_dir: str | None, flag: str
) -> Any:
    """`datasets.load_dataset` with its logging and progress bars silenced (restored afterwards),
    so a bad file is reported once, as a one-line DataError, instead of as a reader traceback."""
    import datasets

    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # a bad file is reported once, below
    bars = datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        dataset = datasets.load_dataset(
            builder, data_files={"data": str(path)}, split="data", cache_dir=cache_dir, **kwargs
        )
        if builder == "json" and dataset.column_names == ["data"] and len(dataset) == 1:
            dataset = datasets.load_dataset(
                builder,
                data_files={"data": str(path)},
                split="data",
                field="data",
                cache_dir=cache_dir,
            )
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad file for the user
        raise DataError(f"cannot read {flag} {path} as {ext[1:]}: {_short(err)}") from None
    finally:
        datasets.logging.set_verbosity(verbosity)
        if not bars:
            datasets.enable_progress_bars()
    return dataset


def _rename_glue_tsv_columns(dataset: Any, task_name: str) -> Any:
    """GLUE's original tsv column names -> the `datasets` names the task code reads; a column
    already holding a target name is dropped first so the rename cannot collide."""
    renames = {
        old: new for old, new in GLUE_TSV_RENAMES[task_name].items() if old in dataset.column_names
    }
    for new in renames.values():
        if new in dataset.column_names:
            dataset = dataset.remove_columns(new)
    return dataset.rename_columns(renames)


def read_data_file(
    path: str | os.PathLike,
    *,
    task_name: str | None = None,
    cache_dir: str | None = None,
    flag: str = "data file",
) -> Any:
    """One local file as a `datasets.Dataset` (columns renamed to `datasets`' GLUE names for a GLUE task)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{flag} {path} does not exist")
    ext = _extension(path)
    builder, kwargs = _reader_for(path, ext, task_name, flag)
    dataset = _load_quietly(builder, path, ext, kwargs, cache_dir, flag)
    if len(dataset) == 0:
        raise DataError(f"{flag} {path} holds no examples")
    if ext == ".tsv" and task_name in GLUE_TSV_RENAMES:
        dataset = _rename_glue_tsv_columns(dataset, task_name)
    return dataset


def load_hub_dataset(name: str, config: str | None = None, cache_dir: str | None = None) -> Any:
    """`datasets.load_dataset(name, config)`; offline or unreachable, a one-line DataError."""
    import datasets

    label = f"{name}/{config}" if config else name
    hint = "pass local files with --train_file / --validation_file (csv, tsv, json, jsonl, parquet)"
    if datasets.config.HF_HUB_OFFLINE or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise DataError(f"dataset '{label}' cannot be downloaded: this machine is offline; {hint}")
    try:
        return datasets.load_dataset(name, config, cache_dir=cache_dir)
    except Exception as err:  # noqa: BLE001
        raise DataError(f"cannot load dataset '{label}' ({_short(err)}); {hint}") from None


def split_files(data_args: Any) -> dict[str, str]:
    """The local files given, by split: `--train_file`, `--validation_file`, `--test_file`."""
    files = {
        split: getattr(data_args, f"{split}_file", None)
        for split in ("train", "validation", "test")
    }
    return {split: path for split, path in files.items() if path}


def load_splits(data_args: Any, read: Any, cache_dir: str | None, no_data: str) -> Any:
    """Local files first (`read(path, flag, cache_dir)` each), else `--dataset_name` through
    `datasets`; neither is the DataError `no data: <no_data>`."""
    import datasets

    files = split_files(data_args)
    if files:
        if getattr(data_args, "dataset_name", None):
            logger.info(
                "--dataset_name %s is not used: local files were given", data_args.dataset_name
            )
        return datasets.DatasetDict(
            {split: read(path, f"--{split}_file", cache_dir) for split, path in files.items()}
        )
    if getattr(data_args, "dataset_name", None):
        return load_hub_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir)
    raise DataError(f"no data: {no_data}")


def load_raw_datasets(
    data_args: Any, *, task_name: str | None = None, cache_dir: str | None = None
) -> Any:
    """The splits named by `data_args` (files first, else hub); `hold_out` applies `validation_ratio`.

    Returns a `datasets.DatasetDict` with some of: train, validation, test.
    """
    if task_name and not split_files(data_args) and not getattr(data_args, "dataset_name", None):
        name, config = HUB_NAMES[task_name]
        raw = load_hub_dataset(name, config, cache_dir)
    else:

        def read(path: str, flag: str, cache: str | None) -> Any:
            return read_data_file(path, task_name=task_name, cache_dir=cache, flag=flag)

        raw = load_splits(
            data_args,
            read,
            cache_dir,
            "pass --train_file / --validation_file, --dataset_name or --task_name",
        )
    if task_name == "mnli" and "validation" not in raw and "validation_matched" in raw:
        raw["validation"] = raw["validation_matched"]
    return raw


def hold_out(raw: Any, ratio: float | None, seed: int) -> Any:
    """`--validation_ratio`: replace the validation split by a seeded part of train."""
    if not ratio:
        return raw
    if "train" not in raw:
        raise DataError("--validation_ratio needs a training split to hold out from")
    if "validation" in raw:
        logger.warning(
            "--validation_ratio %s: the validation split is replaced by part of train", ratio
        )
    parts = raw["train"].train_test_split(test_size=ratio, seed=seed)
    raw["train"], raw["validation"] = parts["train"], parts["test"]
    return raw


def read_lines(path: str | os.PathLike, what: str) -> list[str]:
    """A text file's lines; a missing or undecodable file is a DataError naming `what` and the path."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{what} {path} does not exist")
    try:
        return file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {what} {path}: {err}") from None


def take_first(dataset: Any, count: int | None) -> Any:
    """The first `count` examples (all when None or more than there are)."""
    if count is None or count >= len(dataset):
        return dataset
    return dataset.select(range(count))


def require_columns(dataset: Any, columns: Iterable[str], *, split: str, flag: str) -> None:
    """A DataError naming the missing columns, the split, the flag that asked for them, and what exists."""
    missing = [column for column in columns if column not in dataset.column_names]
    if missing:
        raise DataError(
            f"{split} data has no column {', '.join(repr(c) for c in missing)} (from {flag}); "
            f"its columns are: {', '.join(dataset.column_names)}"
        )


def first_split(raw: Mapping[str, Any]) -> Any:
    """The split that best shows the data's columns: train if present."""
    for split in ("train", "validation", "test"):
        if split in raw:
            return raw[split]
    return next(iter(raw.values()))
