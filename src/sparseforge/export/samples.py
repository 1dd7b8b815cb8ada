"""Sample inputs for export and verification: real text from a data file, else built-in sentences.

Verification uses two batches on purpose: one padded to `sequence_length` (the deployment shape)
and one padded only to its longest sample with a different batch size, so a graph whose
batch or sequence axis was accidentally fixed, or that ignores the padding mask, fails.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch

from sparseforge.errors import DataError
from sparseforge.tasks import QUESTION_ANSWERING

BUILTIN_TEXTS = [
    "the movie was a great story with a very good actor",
    "what a terrible and boring film , i hate the plot",
    "john said the company in london was the best bank in the city",
    "paul went to paris and france was fun",
    "who is the president of germany and where does he work ?",
    "the minister says the film was not bad but not good",
    "we love this story",
    "it was the worst movie",
]
_TEXT_COLUMNS = ("sentence", "text", "sentence1", "question", "content", "tokens", "premise")
_PAIR_COLUMNS = {"question": "context", "sentence1": "sentence2", "premise": "hypothesis"}


def read_texts(
    path: Path, limit: int, text_column: str | None = None
) -> list[str | tuple[str, str]]:
    """Up to `limit` texts (or text pairs) from a .tsv/.csv (with header) or .json/.jsonl file."""
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    rows: list[dict[str, Any]] = []
    suffix = path.suffix.lower()
    with path.open(encoding="utf-8", newline="") as handle:
        if suffix in (".tsv", ".csv"):
            reader = csv.DictReader(
                handle,
                delimiter="\t" if suffix == ".tsv" else ",",
                quoting=csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL,
            )
            for row in reader:
                rows.append(row)
                if len(rows) >= limit:
                    break
        elif suffix in (".json", ".jsonl"):
            text = handle.read()
            try:
                data = json.loads(text)
                data = data.get("data", data) if isinstance(data, dict) else data
            except json.JSONDecodeError:
                data = [json.loads(line) for line in text.splitlines() if line.strip()]
            rows = list(data)[:limit]
        else:
            raise DataError(
                f"{path}: unsupported data file type '{suffix}'; use .tsv, .csv, .json or .jsonl"
            )
    if not rows:
        raise DataError(f"{path}: no rows")
    columns = list(rows[0])
    column = text_column or next((c for c in _TEXT_COLUMNS if c in columns), None)
    if column is None or column not in columns:
        raise DataError(
            f"{path}: no text column {text_column or _TEXT_COLUMNS}; columns are {columns} (use --text_column)"
        )
    pair = _PAIR_COLUMNS.get(column)
    texts: list[str | tuple[str, str]] = []
    for row in rows:
        value = row[column]
        value = " ".join(value) if isinstance(value, list) else str(value)
        texts.append((value, str(row[pair])) if pair and pair in row else value)
    return texts


def _builtin(task: str) -> list[str | tuple[str, str]]:
    if task == QUESTION_ANSWERING:
        return [
            (BUILTIN_TEXTS[i], BUILTIN_TEXTS[(i + 2) % len(BUILTIN_TEXTS)])
            for i in range(len(BUILTIN_TEXTS))
        ]
    return list(BUILTIN_TEXTS)


def _encode(
    tokenizer: Any, texts: list[str | tuple[str, str]], padding: str | bool, max_length: int
) -> dict[str, torch.Tensor]:
    firsts = [t[0] if isinstance(t, tuple) else t for t in texts]
    seconds = [t[1] for t in texts] if all(isinstance(t, tuple) for t in texts) else None
    encoded = tokenizer(
        firsts,
        seconds,
        padding=padding,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    return {
        name: encoded[name]
        for name in ("input_ids", "attention_mask", "token_type_ids")
        if name in encoded
    }


def sample_batches(
    tokenizer: Any,
    task: str,
    sequence_length: int,
    *,
    texts: list[str | tuple[str, str]] | None = None,
    num_samples: int = 8,
) -> list[dict[str, torch.Tensor]]:
    """[batch padded to sequence_length, smaller batch cut at sequence_length // 2, padded to its longest]."""
    texts = (texts or _builtin(task))[:num_samples]
    if len(texts) < 2:
        texts = texts * 2
    full = _encode(tokenizer, texts, "max_length", sequence_length)
    # A different batch size and a shorter sequence: the axes must really be dynamic.
    short = _encode(
        tokenizer, texts[: max(1, len(texts) // 2 + 1)], True, max(2, sequence_length // 2)
    )
    return [full, short]
