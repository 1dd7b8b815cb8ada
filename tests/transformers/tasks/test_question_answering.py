"""Question answering: SQuAD reading, overflowing windows, n-best post-processing, EM/F1, and the CLI."""

from __future__ import annotations

import collections
import json
import re
import shutil
import string
from pathlib import Path

import numpy as np
import pytest

from sparseforge.errors import DataError
from sparseforge.transformers.tasks import qa_utils

SQUAD = Path(__file__).resolve().parents[2] / "fixtures" / "squad"
TRAIN, DEV, DEV_V2 = SQUAD / "train-v1.1.json", SQUAD / "dev-v1.1.json", SQUAD / "dev-v2.0.json"


# ----- reference: the official SQuAD v1.1 evaluation, transcribed independently ---------------
def _official_normalize(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def _official_v11(dataset, predictions):
    f1 = exact = total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    continue
                truths = [a["text"] for a in qa["answers"]]
                pred = predictions[qa["id"]]
                exact += max(
                    float(_official_normalize(pred) == _official_normalize(t)) for t in truths
                )
                scores = []
                for t in truths:
                    p_tok, t_tok = _official_normalize(pred).split(), _official_normalize(t).split()
                    common = collections.Counter(p_tok) & collections.Counter(t_tok)
                    same = sum(common.values())
                    if same == 0:
                        scores.append(0.0)
                        continue
                    precision, recall = same / len(p_tok), same / len(t_tok)
                    scores.append(2 * precision * recall / (precision + recall))
                f1 += max(scores)
    return {"exact_match": 100.0 * exact / total, "f1": 100.0 * f1 / total}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from conftest import write_tokenizer

    return write_tokenizer(tmp_path_factory.mktemp("tok"))


# ----- reading -----------------------------------------------------------------------------------
def test_read_official_and_flat_layouts(tmp_path):
    examples = qa_utils.read_squad(TRAIN)
    raw = json.loads(TRAIN.read_text())["data"]
    assert len(examples) == sum(len(p["qas"]) for a in raw for p in a["paragraphs"])
    first = examples[0]
    assert set(first) == {"id", "title", "context", "question", "answers"}
    assert first["answers"]["text"] == [raw[0]["paragraphs"][0]["qas"][0]["answers"][0]["text"]]
    qa_utils.check_answer_spans(examples, "train")

    flat = tmp_path / "flat.jsonl"
    flat.write_text("\n".join(json.dumps(e) for e in examples))
    assert qa_utils.read_squad(flat) == examples

    v2 = qa_utils.read_squad(DEV_V2)
    impossible = [e for e in v2 if not e["answers"]["text"]]
    assert [e["id"] for e in impossible] == ["v900", "v901"]  # plausible_answers are not answers


def test_read_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        qa_utils.read_squad(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="cannot read"):
        qa_utils.read_squad(bad)
    bad.write_text(json.dumps([{"question": "q"}]))
    with pytest.raises(DataError, match="lacks context"):
        qa_utils.read_squad(bad)
    examples = qa_utils.read_squad(TRAIN)
    examples[0]["answers"]["answer_start"][0] += 1
    with pytest.raises(DataError, match="not at answer_start"):
        qa_utils.check_answer_spans(examples, "train")


# ----- windows ------------------------------------------------------------------------------------
def _batch(examples):
    return {key: [e[key] for e in examples] for key in examples[0]}


def test_windows_overflow_and_labels_point_at_the_answer(tokenizer):
    examples = qa_utils.read_squad(TRAIN)
    features = qa_utils.prepare_features(
        _batch(examples),
        tokenizer,
        max_seq_length=40,
        doc_stride=12,
        keep_offsets=True,
        pad_to_max_length=True,
    )
    n = len(features["input_ids"])
    assert n > len(examples)  # contexts overflow into several windows
    assert all(len(ids) == 40 for ids in features["input_ids"])
    by_id = {e["id"]: e for e in examples}
    labelled = collections.Counter()
    for i in range(n):
        example = by_id[features["example_id"][i]]
        offsets = features["offset_mapping"][i]
        assert offsets[0] is None  # CLS and question tokens carry no context offsets
        start, end = features["start_positions"][i], features["end_positions"][i]
        if start == 0:
            assert end == 0
            continue
        span = example["context"][offsets[start][0] : offsets[end][1]]
        assert span == example["answers"]["text"][0]
        labelled[example["id"]] += 1
    assert set(labelled) == set(by_id)  # every answer lies whole in at least one window


def test_window_that_cannot_fit_is_a_data_error(tokenizer):
    examples = qa_utils.read_squad(TRAIN)[:1]
    with pytest.raises(DataError, match="doc_stride"):
        qa_utils.prepare_features(_batch(examples), tokenizer, max_seq_length=16, doc_stride=14)


# ----- post-processing ---------------------------------------------------------------------------
def _eval_features(tokenizer, examples, max_len=40, stride=12):
    features = qa_utils.prepare_features(
        _batch(examples),
        tokenizer,
        max_seq_length=max_len,
        doc_stride=stride,
        keep_offsets=True,
        pad_to_max_length=True,
    )
    rows = [{k: features[k][i] for k in features} for i in range(len(features["input_ids"]))]
    return rows


def _logits_for_span(features, example_id, char_start, char_end, high=10.0):
    """Low logits everywhere; the tokens covering [char_start, char_end) in one window get `high`."""
    start_logits = np.full((len(features), 40), -5.0)
    end_logits = np.full((len(features), 40), -5.0)
    for i, feature in enumerate(features):
        if feature["example_id"] != example_id:
            continue
        offsets = feature["offset_mapping"]
        starts = [t for t, o in enumerate(offsets) if o is not None and o[0] == char_start]
        ends = [t for t, o in enumerate(offsets) if o is not None and o[1] == char_end]
        if starts and ends:
            start_logits[i, starts[0]] = high
            end_logits[i, ends[0]] = high
            return start_logits, end_logits, i
    raise AssertionError("span not found in any window")


def test_postprocess_maps_logits_back_to_context_spans(tokenizer):
    examples = qa_utils.read_squad(TRAIN)
    features = _eval_features(tokenizer, examples)
    target = examples[3]  # "the city of london", near the end of a long context
    start_char = target["answers"]["answer_start"][0]
    end_char = start_char + len(target["answers"]["text"][0])
    start_logits, end_logits, window = _logits_for_span(
        features, target["id"], start_char, end_char
    )
    assert window > 0 and features[window - 1]["example_id"] == target["id"]  # not the first window
    predictions, nbest, null_diffs = qa_utils.postprocess_predictions(
        examples, features, start_logits, end_logits, n_best_size=5
    )
    assert (
        predictions[target["id"]] == target["context"][start_char:end_char] == "the city of london"
    )
    best = nbest[target["id"]][0]
    assert best["offsets"] == [start_char, end_char]
    assert sum(c["probability"] for c in nbest[target["id"]]) == pytest.approx(1.0)
    assert null_diffs == {}
    assert set(predictions) == {e["id"] for e in examples}

    # a span longer than max_answer_length is never chosen
    short, _, _ = qa_utils.postprocess_predictions(
        examples, features, start_logits, end_logits, max_answer_length=2
    )
    assert short[target["id"]] != "the city of london"
    assert len(tokenizer.tokenize(short[target["id"]])) <= 2

    # padding logits (-100 beyond a window's length) are ignored
    padded_start = np.concatenate([start_logits, np.full((len(features), 8), -100.0)], axis=1)
    padded_end = np.concatenate([end_logits, np.full((len(features), 8), -100.0)], axis=1)
    same, _, _ = qa_utils.postprocess_predictions(examples, features, padded_start, padded_end)
    assert same == predictions


def test_postprocess_v2_null_answer_and_threshold(tokenizer):
    examples = qa_utils.read_squad(DEV_V2)
    features = _eval_features(tokenizer, examples)
    target = examples[0]
    start_char = target["answers"]["answer_start"][0]
    end_char = start_char + len(target["answers"]["text"][0])
    start_logits, end_logits, window = _logits_for_span(
        features, target["id"], start_char, end_char, high=3.0
    )
    for i, feature in enumerate(features):
        if feature["example_id"] == target["id"]:
            start_logits[i, 0] = end_logits[i, 0] = 4.0  # null score 8 > best span 6
    predictions, _, null_diffs = qa_utils.postprocess_predictions(
        examples, features, start_logits, end_logits, version_2_with_negative=True
    )
    assert predictions[target["id"]] == ""
    assert null_diffs[target["id"]] == pytest.approx(8.0 - 6.0)
    predictions, _, _ = qa_utils.postprocess_predictions(
        examples,
        features,
        start_logits,
        end_logits,
        version_2_with_negative=True,
        null_score_diff_threshold=2.5,
    )
    assert predictions[target["id"]] == "paul"


# ----- metric ---------------------------------------------------------------------------------------
def test_squad_metric_equals_official_formula():
    examples = qa_utils.read_squad(DEV)
    ids = [e["id"] for e in examples]
    predictions = {
        ids[0]: "Paul.",  # punctuation and case: exact
        ids[1]: "city of london",  # matches "the city of london" once the article is dropped
        ids[2]: "john said the film",  # best F1 against "the film was the best": 1/3
    }
    result = qa_utils.squad_metrics(predictions, examples)
    # by hand: EM = (1 + 1 + 0) / 3, F1 = (1 + 1 + 1/3) / 3
    assert result["exact_match"] == pytest.approx(100 * 2 / 3)
    assert result["f1"] == pytest.approx(100 * (2 + 1 / 3) / 3)
    official = _official_v11(json.loads(DEV.read_text())["data"], predictions)
    assert result == pytest.approx(official)

    # a missing prediction scores 0, as in the official script
    partial = {ids[0]: "paul"}
    assert qa_utils.squad_metrics(partial, examples) == pytest.approx(
        _official_v11(json.loads(DEV.read_text())["data"], partial)
    )


def test_squad_v2_metric_no_answer_rules():
    examples = qa_utils.read_squad(DEV_V2)
    predictions = {
        e["id"]: (e["answers"]["text"][0] if e["answers"]["text"] else "") for e in examples
    }
    result = qa_utils.squad_metrics(predictions, examples, version_2=True)
    assert result["exact"] == result["f1"] == 100.0
    assert result["NoAns_total"] == 2 and result["HasAns_total"] == 3
    predictions["v900"] = "paul"  # answering an unanswerable question scores 0
    result = qa_utils.squad_metrics(predictions, examples, version_2=True)
    assert result["NoAns_exact"] == result["NoAns_f1"] == 50.0
    assert result["f1"] == pytest.approx(100 * 4 / 5)


def test_write_predictions(tmp_path):
    path = qa_utils.write_predictions(
        tmp_path / "out", {"a": "paul"}, {"a": [{"text": "paul"}]}, {"a": -1.0}
    )
    assert json.loads(path.read_text()) == {"a": "paul"}
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "nbest_predictions.json",
        "null_odds.json",
        "predictions.json",
    ]
    shutil.rmtree(path.parent)


# ----- the CLI ---------------------------------------------------------------------------------------
def _train(argv):
    from sparseforge.cli import main as sparseforge_main

    return sparseforge_main(["train", "question-answering", *argv, "--report_to", "none"])


@pytest.mark.slow
def test_seed_run_qa_command_scaled_down(tiny_model_dir, tmp_path):
    """The seed's run_qa.py command, flag for flag, with local model / teacher / data and small sizes."""
    import torch
    from safetensors.torch import load_file

    model = tiny_model_dir("question-answering", name="student")
    teacher = tiny_model_dir("question-answering", name="teacher", seed=1)
    out = tmp_path / "sparse70_quant"
    code = _train(
        [
            "--model_name_or_path",
            str(model),
            "--distill_teacher",
            str(teacher),
            "--dataset_name",
            "squad",
            "--train_file",
            str(TRAIN),
            "--validation_file",
            str(DEV),
            "--do_train",
            "--do_eval",
            "--evaluation_strategy",
            "epoch",
            "--per_device_train_batch_size",
            "4",
            "--learning_rate",
            "5e-5",
            "--max_seq_length",
            "48",
            "--doc_stride",
            "16",
            "--output_dir",
            str(out),
            "--cache_dir",
            str(tmp_path / "cache"),
            "--preprocessing_num_workers",
            "2",
            "--seed",
            "42",
            "--num_train_epochs",
            "40",
            "--recipe",
            str(SQUAD / "seed_recipe.md"),
            "--onnx_export_path",
            str(out / "onnx"),
            "--save_strategy",
            "epoch",
            "--save_total_limit",
            "2",
            "--fp16",
        ]
    )
    assert code == 0
    results = json.loads((out / "eval_results.json").read_text())
    assert {"eval_exact_match", "eval_f1", "eval_loss"} <= set(results)
    assert results["epoch"] == pytest.approx(
        2.0
    )  # the recipe's 2 epochs, not --num_train_epochs 40
    predictions = json.loads((out / "predictions.json").read_text())
    dev = qa_utils.read_squad(DEV)
    assert set(predictions) == {e["id"] for e in dev}
    # every predicted answer is a span of its context
    assert all(predictions[e["id"]] in e["context"] for e in dev)
    assert qa_utils.squad_metrics(predictions, dev)["f1"] == pytest.approx(results["eval_f1"])
    assert (out / "recipe.yaml").is_file() and "GMPruningModifier" in (
        out / "recipe.yaml"
    ).read_text()
    assert len(list(out.glob("checkpoint-*"))) <= 2
    weights = load_file(str(out / "model.safetensors"))
    query = next(v for k, v in weights.items() if k.endswith("layer.0.attention.self.query.weight"))
    assert float((query == 0).float().mean()) == pytest.approx(0.7, abs=0.02)
    blocks = query.reshape(query.shape[0], -1, 4)  # [1,4] blocks: zero together
    assert torch.all((blocks == 0).all(-1) == (blocks == 0).any(-1))
    assert any((out / "onnx").rglob("*.onnx"))


@pytest.mark.slow
def test_zoo_stubs_v2_and_predict(tiny_model_dir, tmp_path, monkeypatch):
    from sparseforge import zoo

    monkeypatch.setenv("SPARSEFORGE_ZOO", str(tmp_path / "zoo"))
    student_stub = "zoo:nlp/masked_language_modeling/tiny-bert/pytorch/huggingface/wiki/base-none"
    teacher_stub = "zoo:nlp/question_answering/obert-base/pytorch/huggingface/squad/base-none"
    zoo.add(student_stub, tiny_model_dir("masked-language-modeling", name="upstream"))
    zoo.add(teacher_stub, tiny_model_dir("question-answering", name="teacher", seed=1))
    out = tmp_path / "v2"
    code = _train(
        [
            "--model_name_or_path",
            student_stub,
            "--distill_teacher",
            teacher_stub,
            "--recipe",
            "zoo:nlp/question_answering/obert-base/pytorch/huggingface/squad/base-none",  # shipped
            "--recipe_args",
            '{"num_epochs": 1}',
            "--train_file",
            str(TRAIN),
            "--validation_file",
            str(DEV_V2),
            "--test_file",
            str(DEV_V2),
            "--version_2_with_negative",
            "--null_score_diff_threshold",
            "0.5",
            "--n_best_size",
            "5",
            "--do_train",
            "--do_eval",
            "--do_predict",
            "--max_seq_length",
            "48",
            "--doc_stride",
            "16",
            "--per_device_train_batch_size",
            "8",
            "--save_strategy",
            "no",
            "--output_dir",
            str(out),
        ]
    )
    assert code == 0
    results = json.loads((out / "eval_results.json").read_text())
    assert {"eval_exact", "eval_f1", "eval_HasAns_f1", "eval_NoAns_exact"} <= set(results)
    assert results["eval_NoAns_total"] == 2
    assert json.loads((out / "config.json").read_text())["architectures"] == [
        "BertForQuestionAnswering"
    ]
    for prefix in ("", "predict_"):
        assert set(json.loads((out / f"{prefix}predictions.json").read_text())) == {
            e["id"] for e in qa_utils.read_squad(DEV_V2)
        }
        assert (out / f"{prefix}null_odds.json").is_file()
    assert "predict_f1" in json.loads((out / "predict_results.json").read_text())


def test_cli_one_line_errors(tiny_model_dir, tmp_path, capsys):
    model = tiny_model_dir("question-answering")
    cases = [
        (["--dataset_name", "squad", "--do_train"], "offline"),
        (["--train_file", str(tmp_path / "missing.json"), "--do_train"], "not found"),
        (
            [
                "--train_file",
                str(TRAIN),
                "--do_train",
                "--max_seq_length",
                "32",
                "--doc_stride",
                "40",
            ],
            "--doc_stride",
        ),
        (
            ["--train_file", str(TRAIN), "--do_train", "--do_eval"],
            "--do_eval needs evaluation data",
        ),
        (
            [
                "--train_file",
                str(TRAIN),
                "--do_train",
                "--recipe",
                "zoo:nlp/question_answering/obert-base/pytorch/huggingface/squad/pruned95",
            ],
            "nearest known",
        ),
    ]
    for index, (argv, message) in enumerate(cases):
        out = tmp_path / f"out{index}"
        capsys.readouterr()
        assert _train(["--model_name_or_path", str(model), "--output_dir", str(out), *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not out.exists()
