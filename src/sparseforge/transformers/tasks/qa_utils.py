"""Extractive question answering: SQuAD files, overflowing windows, n-best answers, EM/F1.

A context longer than `max_seq_length` is cut into overlapping windows (`doc_stride` tokens of
overlap) so every answer lies whole inside at least one window; each window ("feature") keeps the
offsets of its tokens in the context, so the best start/end logits over all windows of a question
map back to a character span of the original context. Exact match and F1 follow the official
SQuAD evaluation scripts (v1.1 and v2.0): lower-case, strip punctuation, articles and extra
whitespace, score against the best of the reference answers.
"""

from __future__ import annotations

import collections
import gzip
import json
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sparseforge.errors import DataError

# ----- reading --------------------------------------------------------------------------------


def _open_text(path: Path):
    return (
        gzip.open(path, "rt", encoding="utf-8")
        if path.suffix == ".gz"
        else path.open(encoding="utf-8")
    )


def _answers_of(qa: Mapping[str, Any], where: str) -> dict[str, list]:
    """Answers as Hugging Face's `squad` dataset holds them: {"text": [...], "answer_start": [...]}."""
    answers = qa.get("answers", [])
    if isinstance(answers, Mapping):  # already in the flat Hugging Face layout
        texts, starts = list(answers.get("text", [])), list(answers.get("answer_start", []))
    else:
        texts = [a["text"] for a in answers]
        starts = [a["answer_start"] for a in answers]
    if len(texts) != len(starts):
        raise DataError(
            f"{where}: answers have {len(texts)} texts but {len(starts)} answer_start values"
        )
    if qa.get("is_impossible"):
        texts, starts = [], []
    return {"text": [str(t) for t in texts], "answer_start": [int(s) for s in starts]}


def _squad_entries(path: Path) -> list[Any]:
    """The file's top-level entries (articles or flat rows), kept apart from turning them into
    examples: reading, json lines vs one document and the `{"data": [...]}` wrapper are file
    layout, each a DataError naming the file."""
    if not path.is_file():
        raise DataError(f"SQuAD file not found: {path}")
    try:
        with _open_text(path) as handle:
            if path.name.endswith((".jsonl", ".jsonl.gz")):
                rows = [json.loads(line) for line in handle if line.strip()]
            else:
                rows = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read {path} as SQuAD json: {err}") from None
    if isinstance(rows, Mapping):
        if "data" not in rows:
            raise DataError(
                f"{path}: a SQuAD json object needs a 'data' list (official layout); keys found: {', '.join(rows)}"
            )
        rows = rows["data"]
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a list of articles or examples")
    return rows


def _article_examples(path: Path, article: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The questions of one article of the official nested layout (paragraphs -> qas), which
    share the article's title and each paragraph's context."""
    examples: list[dict[str, Any]] = []
    for paragraph in article["paragraphs"]:
        for qa in paragraph["qas"]:
            where = f"{path}: question {qa.get('id', '?')}"
            examples.append(
                {
                    "id": str(qa["id"]),
                    "title": str(article.get("title", "")),
                    "context": paragraph["context"],
                    "question": qa["question"],
                    "answers": _answers_of(qa, where),
                }
            )
    return examples


def _flat_example(path: Path, index: int, row: Mapping[str, Any]) -> dict[str, Any]:
    """One flat row (the `datasets` squad layout); its id defaults to its position, and a row
    without context or question is a DataError naming the entry and the layouts accepted."""
    missing = [key for key in ("context", "question") if key not in row]
    if missing:
        raise DataError(
            f"{path}: entry {index} lacks {', '.join(missing)}; rows need id, context, question, answers "
            "(or use the official SQuAD layout with data/paragraphs/qas)"
        )
    return {
        "id": str(row.get("id", index)),
        "title": str(row.get("title", "")),
        "context": row["context"],
        "question": row["question"],
        "answers": _answers_of(row, f"{path}: entry {index}"),
    }


def read_squad(path: str | Path) -> list[dict[str, Any]]:
    """Examples of a SQuAD v1.1/v2.0 file as flat rows (id, title, context, question, answers).

    Accepts the official nested json (`{"data": [{"title", "paragraphs": [...]}]}`), or flat
    rows with those five fields as a json list, `{"data": [rows]}`, or json lines (`.gz` too).
    Unanswerable v2 questions (`is_impossible`) get empty answers.
    """
    path = Path(path)
    examples: list[dict[str, Any]] = []
    for index, row in enumerate(_squad_entries(path)):
        if not isinstance(row, Mapping):
            raise DataError(f"{path}: entry {index} is not an object")
        if "paragraphs" in row:  # official nested layout
            examples.extend(_article_examples(path, row))
        else:
            examples.append(_flat_example(path, index, row))
    if not examples:
        raise DataError(f"{path}: no questions found")
    return examples


def check_answer_spans(examples: Iterable[Mapping[str, Any]], where: str) -> None:
    """Each answer's `answer_start` must point at its text in the context (a wrong offset trains garbage)."""
    for example in examples:
        for text, start in zip(
            example["answers"]["text"], example["answers"]["answer_start"], strict=True
        ):
            if example["context"][start : start + len(text)] != text:
                raise DataError(
                    f"{where}: question {example['id']}: answer {text!r} is not at answer_start {start} of its context"
                )


# ----- preprocessing --------------------------------------------------------------------------


def _tokenize_windows(
    examples: Mapping[str, list],
    tokenizer: Any,
    max_seq_length: int,
    doc_stride: int,
    pad_to_max_length: bool,
) -> Any:
    pad_on_right = tokenizer.padding_side == "right"
    questions = [q.lstrip() for q in examples["question"]]  # leading spaces waste window room
    first, second = (
        (questions, examples["context"]) if pad_on_right else (examples["context"], questions)
    )
    # tokenizers panics (not an Exception) when the stride does not fit beside a question: check first
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    longest = max(len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"])
    if doc_stride >= max_seq_length - specials - longest:
        raise DataError(
            f"cannot cut contexts into windows of {max_seq_length} tokens with doc_stride {doc_stride}: the longest "
            f"question takes {longest} tokens (+{specials} special), leaving {max_seq_length - specials - longest} for "
            "context; lower --doc_stride or raise --max_seq_length"
        )
    try:
        return tokenizer(
            first,
            second,
            truncation="only_second" if pad_on_right else "only_first",
            max_length=max_seq_length,
            stride=doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            padding="max_length" if pad_to_max_length else False,
        )
    except Exception as err:  # tokenizers raises plain exceptions for windows that cannot fit
        raise DataError(
            f"cannot cut contexts into windows of {max_seq_length} tokens with doc_stride {doc_stride}: {err} "
            "(a question must leave room for the stride: lower --doc_stride or raise --max_seq_length)"
        ) from None


def prepare_features(
    examples: Mapping[str, list],
    tokenizer: Any,
    max_seq_length: int = 384,
    doc_stride: int = 128,
    pad_to_max_length: bool = False,
    keep_offsets: bool = False,
) -> dict[str, list]:
    """Batched `datasets.map` function: question+context -> windows with start/end token labels.

    A window that does not hold the whole (first) answer, and an unanswerable question, point
    both labels at the CLS token. With `keep_offsets` (evaluation), each window also keeps its
    `example_id` and an `offset_mapping` where non-context tokens are None, for post-processing.
    """
    pad_on_right = tokenizer.padding_side == "right"
    context_index = 1 if pad_on_right else 0
    encoded = _tokenize_windows(examples, tokenizer, max_seq_length, doc_stride, pad_to_max_length)
    sample_map = encoded.pop("overflow_to_sample_mapping")
    offsets_all = encoded.pop("offset_mapping")
    starts, ends, example_ids, kept_offsets = [], [], [], []
    for i, offsets in enumerate(offsets_all):
        input_ids = encoded["input_ids"][i]
        cls_index = (
            input_ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in input_ids else 0
        )
        sequence_ids = encoded.sequence_ids(i)
        example = sample_map[i]
        answers = examples["answers"][example]
        start_position = end_position = cls_index
        context_tokens = [t for t, s in enumerate(sequence_ids) if s == context_index]
        if answers["answer_start"] and context_tokens:
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])
            first, last = context_tokens[0], context_tokens[-1]
            if offsets[first][0] <= start_char and offsets[last][1] >= end_char:
                start_position = first
                while start_position <= last and offsets[start_position][0] <= start_char:
                    start_position += 1
                start_position -= 1
                end_position = last
                while end_position >= first and offsets[end_position][1] >= end_char:
                    end_position -= 1
                end_position += 1
        starts.append(start_position)
        ends.append(end_position)
        if keep_offsets:
            example_ids.append(examples["id"][example])
            kept_offsets.append(
                [o if sequence_ids[k] == context_index else None for k, o in enumerate(offsets)]
            )
    features = dict(encoded)
    features["start_positions"] = starts
    features["end_positions"] = ends
    if keep_offsets:
        features["example_id"] = example_ids
        features["offset_mapping"] = kept_offsets
    return features


# ----- post-processing ------------------------------------------------------------------------


def _softmax(scores: np.ndarray) -> np.ndarray:
    exp = np.exp(scores - scores.max())
    return exp / exp.sum()


def _window_spans(
    offsets: Sequence[Any],
    starts: np.ndarray,
    ends: np.ndarray,
    n_best_size: int,
    max_answer_length: int,
) -> list[dict[str, Any]]:
    """Candidate spans of one window from its top starts and ends: the cut to spans inside the
    context (positions with offsets), ordered and at most `max_answer_length` tokens long."""
    spans: list[dict[str, Any]] = []
    top_starts = np.argsort(starts)[::-1][:n_best_size]
    top_ends = np.argsort(ends)[::-1][:n_best_size]
    for s in top_starts:
        for e in top_ends:
            if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                continue
            spans.append(
                {
                    "offsets": (offsets[s][0], offsets[e][1]),
                    "score": float(starts[s] + ends[e]),
                    "start_logit": float(starts[s]),
                    "end_logit": float(ends[e]),
                }
            )
    return spans


def _question_candidates(
    windows: Sequence[int],
    features: Sequence[Mapping[str, Any]],
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    n_best_size: int,
    max_answer_length: int,
) -> tuple[list[dict[str, Any]], float | None]:
    """The spans of all windows of one question and its lowest null score (CLS start + end), the
    two things the answer is chosen from; None when the question has no window."""
    min_null: float | None = None
    candidates: list[dict[str, Any]] = []
    for index in windows:
        offsets = features[index]["offset_mapping"]
        starts = np.asarray(start_logits[index])[: len(offsets)]
        ends = np.asarray(end_logits[index])[: len(offsets)]
        null = float(starts[0] + ends[0])
        if min_null is None or null < min_null:
            min_null = null
        candidates.extend(_window_spans(offsets, starts, ends, n_best_size, max_answer_length))
    return candidates, min_null


def _nbest_list(
    candidates: list[dict[str, Any]],
    context: str,
    min_null: float | None,
    with_null: bool,
    n_best_size: int,
) -> list[dict[str, Any]]:
    """The n-best list written to `nbest_predictions.json`: best spans with their text, the null
    answer among them for v2, never empty, each with its softmax probability."""
    candidates.sort(key=lambda c: c["score"], reverse=True)
    candidates = candidates[:n_best_size]
    for candidate in candidates:
        candidate["text"] = context[candidate["offsets"][0] : candidate["offsets"][1]]
    if with_null and min_null is not None:
        candidates.append(
            {
                "offsets": (0, 0),
                "score": min_null,
                "start_logit": None,
                "end_logit": None,
                "text": "",
            }
        )
        candidates.sort(key=lambda c: c["score"], reverse=True)
        candidates = candidates[: max(n_best_size, 1)]
    if not candidates:
        candidates = [
            {"offsets": (0, 0), "score": 0.0, "start_logit": 0.0, "end_logit": 0.0, "text": ""}
        ]
    probabilities = _softmax(np.array([c["score"] for c in candidates]))
    for candidate, probability in zip(candidates, probabilities, strict=True):
        candidate["probability"] = float(probability)
        candidate["offsets"] = list(candidate["offsets"])
    return candidates


def _v2_answer(
    candidates: Sequence[Mapping[str, Any]], min_null: float | None, threshold: float
) -> tuple[str, float]:
    """SQuAD v2's choice between the best span and no answer: (answer text, null score minus
    best span score); "" when no span exists or the null score wins by more than `threshold`."""
    best_span = next((c for c in candidates if c["start_logit"] is not None), None)
    if best_span is None:
        return "", 0.0
    diff = float((min_null or 0.0) - best_span["score"])
    return ("" if diff > threshold else best_span["text"]), diff


def postprocess_predictions(
    examples: Sequence[Mapping[str, Any]],
    features: Sequence[Mapping[str, Any]],
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    version_2_with_negative: bool = False,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    null_score_diff_threshold: float = 0.0,
) -> tuple[dict[str, str], dict[str, list[dict[str, Any]]], dict[str, float]]:
    """Best answer text per question from the windows' logits, mapped back to the context.

    For every window, the `n_best_size` top starts and ends form candidate spans (inside the
    context, end >= start, at most `max_answer_length` tokens); a span's score is start + end
    logit. With `version_2_with_negative`, the question is unanswered ("") when the best null
    score (CLS start + end, lowest over windows) beats the best span by more than
    `null_score_diff_threshold`. Returns (predictions, n-best lists with probabilities, null-score
    differences for v2). `start_logits`/`end_logits` are (num_features, seq_len); positions beyond
    a window's length (the Trainer pads with -100) are never chosen because they have no offsets.
    """
    if len(features) != len(start_logits) or len(features) != len(end_logits):
        raise DataError(
            f"got logits for {len(start_logits)} windows but {len(features)} windows were evaluated"
        )
    by_example: dict[str, list[int]] = collections.defaultdict(list)
    for index, feature in enumerate(features):
        by_example[feature["example_id"]].append(index)

    predictions: dict[str, str] = {}
    nbest: dict[str, list[dict[str, Any]]] = {}
    null_diffs: dict[str, float] = {}
    for example in examples:
        windows = by_example.get(example["id"], [])
        candidates, min_null = _question_candidates(
            windows, features, start_logits, end_logits, n_best_size, max_answer_length
        )
        candidates = _nbest_list(
            candidates, example["context"], min_null, version_2_with_negative, n_best_size
        )
        nbest[example["id"]] = candidates
        if version_2_with_negative:
            predictions[example["id"]], null_diffs[example["id"]] = _v2_answer(
                candidates, min_null, null_score_diff_threshold
            )
        else:
            predictions[example["id"]] = candidates[0]["text"]
    return predictions, nbest, null_diffs


# ----- metric ---------------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, drop punctuation and a/an/the, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def f1_score(prediction: str, truth: str, version_2: bool = False) -> float:
    """Token-overlap F1 of the official scripts; v2.0's gives an empty side 1 only against another empty side."""
    pred_tokens, truth_tokens = (
        normalize_answer(prediction).split(),
        normalize_answer(truth).split(),
    )
    if version_2 and (not pred_tokens or not truth_tokens):
        return float(pred_tokens == truth_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(truth_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(
    predictions: Mapping[str, str], examples: Iterable[Mapping[str, Any]], version_2: bool = False
) -> dict[str, float]:
    """Exact match and F1 in percent, each the best over a question's reference answers.

    v1.1 returns `exact_match`, `f1`; v2.0 returns `exact`, `f1`, `total` and the HasAns_/NoAns_
    breakdown, as the official v2 script (a question without answers has the reference "").
    Every question of `examples` counts; one without a prediction scores 0.
    """
    exact_scores: dict[str, float] = {}
    f1_scores: dict[str, float] = {}
    has_answer: dict[str, bool] = {}
    for example in examples:
        qid = example["id"]
        truths = [t for t in example["answers"]["text"] if not version_2 or normalize_answer(t)]
        has_answer[qid] = bool(truths)
        if not truths:
            truths = [""]
        prediction = predictions.get(qid, "")
        exact_scores[qid] = max(exact_match(prediction, t) for t in truths)
        f1_scores[qid] = max(f1_score(prediction, t, version_2) for t in truths)
    total = len(exact_scores)
    if not total:
        raise DataError("no questions to score")

    def mean(scores: dict[str, float], ids: Iterable[str]) -> float:
        ids = list(ids)
        return 100.0 * sum(scores[i] for i in ids) / len(ids)

    if not version_2:
        return {"exact_match": mean(exact_scores, exact_scores), "f1": mean(f1_scores, f1_scores)}
    result = {
        "exact": mean(exact_scores, exact_scores),
        "f1": mean(f1_scores, f1_scores),
        "total": float(total),
    }
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        ids = [qid for qid, has in has_answer.items() if has == wanted]
        if ids:
            result[f"{prefix}_exact"] = mean(exact_scores, ids)
            result[f"{prefix}_f1"] = mean(f1_scores, ids)
            result[f"{prefix}_total"] = float(len(ids))
    return result


def write_predictions(
    output_dir: str | Path,
    predictions: Mapping[str, str],
    nbest: Mapping[str, Any] | None = None,
    null_diffs: Mapping[str, float] | None = None,
    prefix: str = "",
) -> Path:
    """Write `predictions.json` (id -> answer text), plus n-best and v2 null odds files beside it."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{prefix}_" if prefix else ""
    files = {f"{stem}predictions.json": predictions}
    if nbest is not None:
        files[f"{stem}nbest_predictions.json"] = nbest
    if null_diffs:
        files[f"{stem}null_odds.json"] = null_diffs
    for name, data in files.items():
        tmp = output_dir / (name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(output_dir / name)
    return output_dir / f"{stem}predictions.json"
