"""Token classification: CoNLL reading, IOB1 -> IOB2, label alignment, seqeval metrics, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sparseforge.cli import main as sparseforge_main
from sparseforge.errors import DataError
from sparseforge.transformers.tasks import ner_utils

CONLL = Path(__file__).resolve().parents[2] / "fixtures" / "conll"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from conftest import write_tokenizer

    return write_tokenizer(tmp_path_factory.mktemp("tok"))


# ----- reading ------------------------------------------------------------------------------------
def test_iob1_to_iob2_rule():
    assert ner_utils.iob1_to_iob2(
        ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-LOC", "I-ORG", "I-MISC"]
    ) == [
        "B-PER",
        "I-PER",
        "O",
        "B-LOC",
        "B-LOC",
        "I-LOC",
        "B-ORG",
        "B-MISC",
    ]
    iob2 = ["B-PER", "I-PER", "O", "B-LOC"]
    assert ner_utils.iob1_to_iob2(iob2) == iob2  # already IOB2: unchanged


def test_read_conll_sentences_docstart_at_end_and_columns():
    text = (CONLL / "train.txt").read_text()
    assert not text.endswith("\n") and text.rstrip().endswith(
        "-DOCSTART- -X- O O"
    )  # the real files' quirk
    rows = ner_utils.read_conll(CONLL / "train.txt")
    blocks = [b for b in text.split("\n\n") if b.strip() and not b.startswith("-DOCSTART-")]
    assert len(rows) == len(blocks) == 5
    assert all(
        len(r["tokens"]) == len(r["ner_tags"]) == len(r["pos_tags"]) == len(r["chunk_tags"])
        for r in rows
    )
    assert rows[0]["tokens"][:2] == ["John", "said"]
    assert rows[0]["ner_tags"] == ["B-PER", "O", "O", "O", "O", "O", "B-LOC", "O"]
    # "Paul John" is one person in IOB1; France I-ORG after O starts an entity; Paris B-LOC after
    # Germany I-LOC stays a new entity
    assert rows[1]["ner_tags"][:2] == ["B-PER", "I-PER"]
    assert rows[2]["ner_tags"] == ["O", "O", "O", "B-ORG", "O", "B-LOC", "B-LOC", "O", "O", "O"]
    assert rows[2]["chunk_tags"][:3] == ["B-NP", "I-NP", "B-PP"]
    assert rows[2]["pos_tags"][:2] == ["DT", "NN"]
    assert (
        ner_utils.read_conll(CONLL / "train.txt", convert_iob1=False)[0]["ner_tags"][0] == "I-PER"
    )


def test_read_conll_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ner_utils.read_conll(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("John NNP I-NP I-PER\nsaid VBD\n")
    with pytest.raises(DataError, match="bad.txt:2"):
        ner_utils.read_conll(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("-DOCSTART- -X- O O\n\n")
    with pytest.raises(DataError, match="no sentences"):
        ner_utils.read_conll(empty)
    two = tmp_path / "two.txt"
    two.write_text("John I-PER\nsaid O\n")
    assert ner_utils.read_conll(two) == [
        {"id": "0", "tokens": ["John", "said"], "ner_tags": ["B-PER", "O"]}
    ]


# ----- alignment ----------------------------------------------------------------------------------
def test_labels_follow_words_to_their_pieces(tokenizer):
    labels = ["B-PER", "I-PER", "O"]
    to_id = {label: i for i, label in enumerate(labels)}
    batch = {"tokens": [["Johnny", "said", "hi"]], "ner_tags": [["B-PER", "O", "O"]]}
    pieces = tokenizer.tokenize("johnny")
    assert len(pieces) > 1  # a word split into several pieces
    kwargs = dict(
        tokenizer=tokenizer, text_column="tokens", label_column="ner_tags", label_to_id=to_id
    )
    first_only = ner_utils.tokenize_and_align_labels(batch, **kwargs)["labels"][0]
    n = len(pieces)
    assert first_only[0] == -100 and first_only[-1] == -100  # [CLS], [SEP]
    assert first_only[1 : 1 + n] == [0] + [-100] * (n - 1)
    every = ner_utils.tokenize_and_align_labels(
        batch, label_all_tokens=True, b_to_i_label=ner_utils.b_to_i(labels), **kwargs
    )["labels"][0]
    assert every[1 : 1 + n] == [0] + [1] * (n - 1)  # B-PER continues as I-PER
    assert ner_utils.b_to_i(labels) == [1, 1, 2]


# ----- metrics ------------------------------------------------------------------------------------
def test_entity_metrics_against_hand_count():
    id_to_label = {0: "B-PER", 1: "I-PER", 2: "O", 3: "B-LOC"}
    labels = np.array([[-100, 0, 1, 2, 3, -100], [-100, 3, 2, 0, -100, -100]])
    predictions = np.array([[2, 0, 1, 2, 2, 2], [2, 3, 2, 3, 2, 2]])
    result = ner_utils.entity_metrics(
        predictions, labels, id_to_label, return_entity_level_metrics=True
    )
    # gold entities: PER(1-2), LOC(4) | LOC(1), PER(3); predicted: PER(1-2) | LOC(1), LOC(3)
    # 4 gold, 3 predicted, 2 correct (PER(1-2), LOC(1)); tokens: 3/4 + 2/3 right
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 4)
    assert result["f1"] == pytest.approx(2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))
    assert result["accuracy"] == pytest.approx(5 / 7)
    assert result["PER_number"] == 2 and result["PER_recall"] == pytest.approx(0.5)
    assert result["LOC_precision"] == pytest.approx(0.5)
    # logits give the same figures as label ids
    logits = np.eye(4)[predictions]
    assert ner_utils.entity_metrics(logits, labels, id_to_label) == {
        k: result[k] for k in ("accuracy", "predicted_classes", "precision", "recall", "f1")
    }
    assert result["predicted_classes"] == 4.0  # B-PER, I-PER, O and B-LOC all predicted somewhere


def test_pos_tags_get_accuracy_only():
    result = ner_utils.entity_metrics(np.array([[0, 1]]), np.array([[0, 0]]), {0: "NN", 1: "VB"})
    assert result == {"accuracy": 0.5, "predicted_classes": 2.0}


def test_all_o_predictions_are_reported_as_a_collapse(caplog):
    id_to_label = {0: "B-PER", 1: "I-PER", 2: "O"}
    labels = np.array([[-100, 0, 1, 2, -100], [-100, 2, 0, 2, -100]])
    with caplog.at_level("WARNING", logger="sparseforge.transformers.metrics"):
        result = ner_utils.entity_metrics(np.full_like(labels, 2), labels, id_to_label)
    assert result["f1"] == 0.0 and result["predicted_classes"] == 1.0
    assert "PREDICTS A SINGLE CLASS ('O')" in caplog.text


# ----- the CLI ------------------------------------------------------------------------------------
def _run(argv):
    return sparseforge_main(
        ["train", "token-classification", *argv, "--report_to", "none", "--save_strategy", "no"]
    )


@pytest.mark.slow
def test_cli_trains_on_conll_files(tiny_model_dir, tmp_path):
    model = tiny_model_dir("token-classification")
    out = tmp_path / "out"
    code = _run(
        [
            "--model_name_or_path",
            str(model),
            "--train_file",
            str(CONLL / "train.txt"),
            "--validation_file",
            str(CONLL / "dev.txt"),
            "--test_file",
            str(CONLL / "dev.txt"),
            "--do_train",
            "--do_eval",
            "--do_predict",
            "--max_seq_length",
            "32",
            "--per_device_train_batch_size",
            "2",
            "--learning_rate",
            "1e-3",
            "--num_train_epochs",
            "2",
            "--output_dir",
            str(out),
            "--return_entity_level_metrics",
            "--label_all_tokens",
            "--evaluation_strategy",
            "epoch",
        ]
    )
    assert code == 0
    results = json.loads((out / "eval_results.json").read_text())
    assert {
        "eval_f1",
        "eval_precision",
        "eval_recall",
        "eval_accuracy",
        "eval_PER_f1",
        "eval_LOC_number",
    } <= set(results)
    assert (
        results["eval_PER_number"] == 2
        and results["eval_LOC_number"] == 2
        and results["eval_ORG_number"] == 1
    )
    config = json.loads((out / "config.json").read_text())
    assert sorted(config["id2label"].values()) == [
        "B-LOC",
        "B-ORG",
        "B-PER",
        "I-LOC",
        "I-ORG",
        "I-PER",
        "O",
    ]
    lines = (out / "predictions.txt").read_text().splitlines()
    dev = ner_utils.read_conll(CONLL / "dev.txt")
    assert [len(line.split()) for line in lines] == [
        len(row["tokens"]) for row in dev
    ]  # one tag per word


@pytest.mark.slow
def test_cli_json_pos_task_and_offline_dataset_error(tiny_model_dir, tmp_path, capsys):
    model = tiny_model_dir("token-classification")
    out = tmp_path / "pos"
    code = _run(
        [
            "--model_name_or_path",
            str(model),
            "--train_file",
            str(CONLL / "train.txt"),
            "--validation_file",
            str(CONLL / "dev.txt"),
            "--task_name",
            "pos",
            "--do_train",
            "--do_eval",
            "--max_seq_length",
            "32",
            "--max_steps",
            "2",
            "--output_dir",
            str(out),
        ]
    )
    assert code == 0
    results = json.loads((out / "eval_results.json").read_text())
    assert "eval_accuracy" in results and "eval_f1" not in results  # POS tags are not entities
    assert "NNP" in json.loads((out / "config.json").read_text())["id2label"].values()

    out = tmp_path / "jsonl"
    code = _run(
        [
            "--model_name_or_path",
            str(model),
            "--train_file",
            str(CONLL / "train.jsonl"),
            "--validation_file",
            str(CONLL / "train.jsonl"),
            "--do_train",
            "--do_eval",
            "--max_seq_length",
            "32",
            "--max_steps",
            "1",
            "--output_dir",
            str(out),
        ]
    )
    assert code == 0 and (out / "eval_results.json").is_file()

    capsys.readouterr()
    code = _run(
        [
            "--model_name_or_path",
            str(model),
            "--dataset_name",
            "conll2003",
            "--do_train",
            "--output_dir",
            str(tmp_path / "x"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "offline" in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()

    code = _run(
        [
            "--model_name_or_path",
            str(model),
            "--train_file",
            str(CONLL / "train.txt"),
            "--label_column_name",
            "tags",
            "--do_train",
            "--output_dir",
            str(tmp_path / "y"),
        ]
    )
    assert code == 2 and "no column 'tags'" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


def test_cli_one_shot_obs_without_do_train_uses_the_train_file(tiny_model_dir, tmp_path):
    recipe = tmp_path / "obs.yaml"
    recipe.write_text(
        "modifiers:\n  - !OBSPruningModifier {params: ['re:bert.encoder.layer.*.output.dense.weight'], start_epoch: 0.0, "
        "end_epoch: 1.0, init_sparsity: 0.1, final_sparsity: 0.5, update_frequency: 0.5, num_grads: 2, fisher_block_size: 8}\n"
    )
    out = tmp_path / "out"
    code = _run(
        [
            "--model_name_or_path",
            str(tiny_model_dir("token-classification")),
            "--train_file",
            str(CONLL / "train.txt"),
            "--max_seq_length",
            "32",
            "--per_device_train_batch_size",
            "2",
            "--recipe",
            str(recipe),
            "--one_shot",
            "--output_dir",
            str(out),
        ]
    )
    assert code == 0
    from safetensors.torch import load_file

    # The regex also matches attention.output.dense: four tensors, one global OBS target over them.
    pruned = [
        t
        for name, t in load_file(str(out / "model.safetensors")).items()
        if name.endswith("output.dense.weight")
    ]
    assert len(pruned) == 4
    assert sum(int((t == 0).sum()) for t in pruned) == sum(t.numel() for t in pruned) // 2


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"tokens": ["john", "said"]}], "no column 'ner_tags'"),
        (
            [{"tokens": ["john", "said"], "ner_tags": ["B-PER", "O"]}, {"tokens": ["paul"]}],
            "example 2: 'ner_tags' holds nothing, not a list of tags",
        ),
        (
            [
                {"tokens": ["john", "said"], "ner_tags": ["B-PER", "O"]},
                {"tokens": ["paul", "went"], "ner_tags": ["B-PER"]},
            ],
            "example 2 has 2 words in 'tokens' and 1 tags in 'ner_tags'; each word needs exactly one tag",
        ),
        (
            [{"tokens": "john said", "ner_tags": ["B-PER", "O"]}],
            "example 1: 'tokens' holds str, not a list of words",
        ),
    ],
)
def test_cli_malformed_rows_are_one_line_errors(tiny_model_dir, tmp_path, capsys, rows, message):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out, model = tmp_path / "out", tiny_model_dir("token-classification")
    capsys.readouterr()
    code = _run(
        [
            "--model_name_or_path",
            str(model),
            "--train_file",
            str(data),
            "--do_train",
            "--output_dir",
            str(out),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert "example" not in message or str(data) in err[0]
    assert not out.exists()
