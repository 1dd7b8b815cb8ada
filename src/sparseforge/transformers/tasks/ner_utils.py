"""Token classification data: CoNLL column files, IOB1 -> IOB2, word-to-token labels, seqeval.

CoNLL-2003 files hold one `token POS chunk NER` line per word, blank lines between sentences and
`-DOCSTART-` lines between documents. Their NER and chunk tags are IOB1 (an entity starts with
`I-` unless it touches an entity of the same type); Hugging Face's `conll2003` and seqeval's
entity scores expect IOB2, where every entity starts with `B-`. `--task_name ner|pos|chunk`
picks the column. Subword tokens get their word's label on the first piece and -100 (ignored)
on the others, or with `--label_all_tokens` the label on every piece (`B-X` continued as `I-X`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from sparseforge.errors import DataError
from sparseforge.transformers.data import read_lines
from sparseforge.transformers.metrics import collapse_check

IGNORE_INDEX = -100
DOCSTART = "-DOCSTART-"
# CoNLL-2003 columns after the token, and the `datasets` column name of each task's labels.
CONLL_COLUMNS = {"pos": 1, "chunk": 2, "ner": 3}


def is_conll_file(path: str | Path) -> bool:
    """Column-format files: CoNLL extensions (eng.train, eng.testa...) or anything not json/csv/parquet."""
    name = Path(path).name.lower()
    if name.endswith((".json", ".jsonl", ".json.gz", ".jsonl.gz", ".csv", ".tsv", ".parquet")):
        return False
    return True


def iob1_to_iob2(tags: Sequence[str]) -> list[str]:
    """`I-X` starts an entity (becomes `B-X`) when the previous tag is `O` or of another type."""
    converted: list[str] = []
    previous = "O"
    for tag in tags:
        if tag.startswith("I-"):
            kind = tag[2:]
            if previous == "O" or previous[2:] != kind:
                tag = "B-" + kind
        converted.append(tag)
        previous = tag
    return converted


def _sentence_row(
    words: Sequence[Sequence[str]], width: int | None, index: int, convert_iob1: bool
) -> dict[str, Any]:
    """One sentence's row from its word lines, kept apart from the line loop: which tag columns a
    file fills depends on its width (2: NER only, 4: POS, chunk, NER)."""
    row: dict[str, Any] = {"id": str(index), "tokens": [w[0] for w in words]}
    if width == 2:
        row["ner_tags"] = [w[1] for w in words]
    else:
        for task, column in CONLL_COLUMNS.items():
            row[f"{task}_tags"] = [w[column] for w in words]
    if convert_iob1:
        for key in ("ner_tags", "chunk_tags"):
            if key in row:
                row[key] = iob1_to_iob2(row[key])
    return row


def _line_width(path: Path, number: int, line: str, parts: Sequence[str], width: int | None) -> int:
    """The file's column count, fixed by its first word line; a line of another width is a
    DataError naming the file and line, so a ragged file fails before training."""
    if width is None:
        width = len(parts)
        if width not in (2, 4):
            raise DataError(
                f"{path}:{number}: expected 'token POS chunk NER' (4 columns) or 'token tag' (2 columns), got {len(parts)}"
            )
    if len(parts) != width:
        raise DataError(
            f"{path}:{number}: {len(parts)} columns where the file has {width}: {line!r}"
        )
    return width


def read_conll(path: str | Path, convert_iob1: bool = True) -> list[dict[str, Any]]:
    """Sentences of a CoNLL column file as rows {id, tokens, pos_tags, chunk_tags, ner_tags}.

    Blank lines end a sentence and `-DOCSTART-` lines are skipped wherever they are (the real
    CoNLL-2003 files put their first one at the very end, without a final newline). Columns are
    token, POS, chunk, NER; a 2-column file (token, tag) fills only `ner_tags`. NER and chunk
    tags are converted from IOB1 to IOB2 (a no-op on IOB2 input) unless `convert_iob1` is False.
    """
    path = Path(path)
    lines = read_lines(path, "CoNLL file")
    sentences: list[dict[str, Any]] = []
    words: list[list[str]] = []
    width: int | None = None

    def flush() -> None:
        if words:
            sentences.append(_sentence_row(words, width, len(sentences), convert_iob1))
            words.clear()

    for number, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts or parts[0] == DOCSTART:
            flush()
            continue
        width = _line_width(path, number, line, parts, width)
        words.append(parts)
    flush()
    if not sentences:
        raise DataError(f"CoNLL file {path} holds no sentences")
    return sentences


# ----- labels ---------------------------------------------------------------------------------


def label_list(datasets_or_rows: Sequence[Any], column: str) -> list[str]:
    """Sorted label names found in `column` over every split (Hugging Face's run_ner order)."""
    found: set[str] = set()
    for data in datasets_or_rows:
        for tags in data[column]:
            found.update(str(tag) for tag in tags)
    return sorted(found)


def b_to_i(labels: Sequence[str]) -> list[int]:
    """For each label id, the id of its `I-` form (for subword pieces after the first)."""
    index = {label: i for i, label in enumerate(labels)}
    return [
        index.get("I-" + label[2:], i) if label.startswith("B-") else i
        for i, label in enumerate(labels)
    ]


def tokenize_and_align_labels(
    examples: Mapping[str, list],
    tokenizer: Any,
    *,
    text_column: str,
    label_column: str,
    label_to_id: Mapping[str, int],
    label_all_tokens: bool = False,
    max_seq_length: int | None = None,
    padding: bool | str = False,
    b_to_i_label: Sequence[int] | None = None,
) -> dict[str, list]:
    """Batched `datasets.map` function: words -> tokens, each token labelled from its word."""
    encoded = tokenizer(
        examples[text_column],
        is_split_into_words=True,
        truncation=True,
        max_length=max_seq_length,
        padding=padding,
    )
    all_labels = []
    for i, tags in enumerate(examples[label_column]):
        word_ids = encoded.word_ids(batch_index=i)
        previous = None
        labels = []
        for word in word_ids:
            if word is None:
                labels.append(IGNORE_INDEX)
            elif word != previous:
                labels.append(label_to_id[str(tags[word])])
            elif label_all_tokens:
                label = label_to_id[str(tags[word])]
                labels.append(b_to_i_label[label] if b_to_i_label is not None else label)
            else:
                labels.append(IGNORE_INDEX)
            previous = word
        all_labels.append(labels)
    result = dict(encoded)
    result["labels"] = all_labels
    return result


# ----- metrics --------------------------------------------------------------------------------


def _is_iob(labels: Sequence[str]) -> bool:
    return all(label == "O" or label[:2] in ("B-", "I-", "E-", "S-") for label in labels)


def entity_metrics(
    predictions: np.ndarray,
    labels: np.ndarray,
    id_to_label: Mapping[int, str],
    return_entity_level_metrics: bool = False,
) -> dict[str, float]:
    """Token accuracy and, for IOB tags, seqeval's entity-level precision / recall / F1.

    `predictions` are logits (batch, seq, labels) or label ids (batch, seq); positions whose label
    is -100 (special tokens, subword pieces) are left out. Per-type figures are added with
    `return_entity_level_metrics` (keys like `PER_f1`, `PER_number`).
    """
    predictions = np.asarray(predictions)
    if predictions.ndim == 3:
        predictions = predictions.argmax(axis=-1)
    labels = np.asarray(labels)
    true_seqs, pred_seqs = [], []
    for pred_row, label_row in zip(predictions, labels, strict=True):
        keep = label_row != IGNORE_INDEX
        true_seqs.append([id_to_label[int(t)] for t in label_row[keep]])
        pred_seqs.append([id_to_label[int(p)] for p in pred_row[: len(label_row)][keep]])
    total = sum(len(seq) for seq in true_seqs)
    correct = sum(
        t == p
        for ts, ps in zip(true_seqs, pred_seqs, strict=True)
        for t, p in zip(ts, ps, strict=True)
    )
    result = {"accuracy": correct / total if total else 0.0}
    result.update(collapse_check(chain.from_iterable(pred_seqs), chain.from_iterable(true_seqs)))
    if not _is_iob(list(id_to_label.values())):
        return result
    from seqeval.metrics import classification_report

    report = classification_report(true_seqs, pred_seqs, output_dict=True, zero_division=0)
    micro = report.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0})
    result.update(
        {
            "precision": float(micro["precision"]),
            "recall": float(micro["recall"]),
            "f1": float(micro["f1-score"]),
        }
    )
    if return_entity_level_metrics:
        for kind, values in report.items():
            if kind.endswith(" avg"):
                continue
            result[f"{kind}_precision"] = float(values["precision"])
            result[f"{kind}_recall"] = float(values["recall"])
            result[f"{kind}_f1"] = float(values["f1-score"])
            result[f"{kind}_number"] = int(values["support"])
    return result
