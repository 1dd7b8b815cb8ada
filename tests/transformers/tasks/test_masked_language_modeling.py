"""Masked-LM: reading text, validation split, grouping, masking, perplexity, and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from sparseforge.cli import main as sparseforge_main
from sparseforge.errors import DataError
from sparseforge.transformers.tasks import masked_language_modeling as mlm

MLM = Path(__file__).resolve().parents[2] / "fixtures" / "mlm"
CORPUS_A, CORPUS_B = MLM / "corpus_a.txt", MLM / "corpus_b.txt"


def _lines(path):
    return [line for line in path.read_text().splitlines() if line.strip()]


def test_read_text_drops_blank_lines_and_json_columns(tmp_path):
    dataset = mlm.read_text(str(CORPUS_A), "--train_file", None)
    assert dataset.column_names == ["text"]
    assert list(dataset["text"]) == _lines(CORPUS_A)
    assert len(dataset) < len(CORPUS_A.read_text().splitlines())  # the fixture has blank lines

    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "\n".join(json.dumps({"id": i, "body": line}) for i, line in enumerate(_lines(CORPUS_B)))
    )
    dataset = mlm.read_text(str(rows), "--train_file", None, text_column="body")
    assert dataset.column_names == ["text"] and list(dataset["text"]) == _lines(CORPUS_B)
    with pytest.raises(DataError, match="no column 'missing'"):
        mlm.read_text(str(rows), "--train_file", None, text_column="missing")


def test_validation_split_is_first_percent_and_corpora_concatenate():
    args = mlm.MaskedLanguageModelingDataArguments(
        train_file=str(CORPUS_A), train_file_2=str(CORPUS_B), validation_split_percentage=10
    )
    raw = mlm.load_mlm_datasets(args, None)
    everything = _lines(CORPUS_A) + _lines(CORPUS_B)
    cut = len(everything) * 10 // 100
    assert list(raw["validation"]["text"]) == everything[:cut]
    assert list(raw["train"]["text"]) == everything[cut:]
    with pytest.raises(DataError, match="empty split"):
        mlm.split_off_validation(raw["validation"].select(range(1)), 50)


def test_group_texts_cuts_equal_blocks():
    batch = {
        "input_ids": [[1, 2, 3], [4, 5], [6, 7, 8, 9]],
        "attention_mask": [[1] * 3, [1] * 2, [1] * 4],
    }
    grouped = mlm.group_texts(batch, block_size=4)
    assert grouped["input_ids"] == [[1, 2, 3, 4], [5, 6, 7, 8]]  # the remainder [9] is dropped
    assert grouped["attention_mask"] == [[1] * 4, [1] * 4]


def test_collator_masks_about_mlm_probability(tiny_tokenizer):
    import torch
    from transformers import DataCollatorForLanguageModeling

    torch.manual_seed(0)
    collator = DataCollatorForLanguageModeling(tokenizer=tiny_tokenizer, mlm_probability=0.3)
    features = mlm.tokenize_lines({"text": _lines(CORPUS_A)}, tiny_tokenizer, 32, "max_length")
    batch = collator(
        [{k: features[k][i] for k in features} for i in range(len(features["input_ids"]))]
    )
    labelled = batch["labels"] != -100
    real_tokens = torch.tensor(features["special_tokens_mask"]) == 0
    real_tokens &= torch.tensor(features["attention_mask"]) == 1
    share = labelled.sum().item() / real_tokens.sum().item()
    assert 0.2 < share < 0.4
    assert not (labelled & ~real_tokens).any()  # special tokens and padding are never masked


def test_metrics_helpers():
    assert mlm.perplexity(math.log(20.0)) == pytest.approx(20.0)
    assert mlm.perplexity(1e6) == float("inf")
    predictions = np.array([[5, 6, 7], [1, 2, 3]])
    labels = np.array([[5, -100, 0], [-100, 2, -100]])
    assert mlm.masked_accuracy(predictions, labels) == {"accuracy": pytest.approx(2 / 3)}


def _train(argv):
    return sparseforge_main(
        ["train", "masked-language-modeling", *argv, "--report_to", "none", "--save_strategy", "no"]
    )


def _always_predicts(model_dir, word):
    """Make the saved MLM predict `word` at every position (a large output bias), so its masked
    accuracy on text made of `word` alone is exactly 1."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    model = transformers.BertForMaskedLM.from_pretrained(str(model_dir))
    with torch.no_grad():
        model.cls.predictions.bias[tokenizer.convert_tokens_to_ids(word)] = 50.0
    model.save_pretrained(str(model_dir))


@pytest.mark.slow
@pytest.mark.parametrize("line_by_line", [False, True])
def test_cli_two_corpora_reports_perplexity(tiny_model_dir, tmp_path, line_by_line):
    model = tiny_model_dir("masked-language-modeling")
    _always_predicts(model, "the")
    # the held-out first 10% of the lines are "the" only: every masked token is "the", so the
    # reported accuracy must be exactly 1.0 (special tokens and padding are not counted)
    corpus_a = tmp_path / "corpus_a.txt"
    corpus_a.write_text("the the the the the the the the\n" * 8 + CORPUS_A.read_text())
    out = tmp_path / "out"
    argv = [
        "--model_name_or_path",
        str(model),
        "--train_file",
        str(corpus_a),
        "--train_file_2",
        str(CORPUS_B),
        "--validation_split_percentage",
        "10",
        "--do_train",
        "--do_eval",
        "--max_seq_length",
        "32",
        "--mlm_probability",
        "0.2",
        "--per_device_train_batch_size",
        "8",
        "--num_train_epochs",
        "1",
        "--output_dir",
        str(out),
    ]
    assert (len(_lines(corpus_a)) + len(_lines(CORPUS_B))) * 10 // 100 <= 8
    assert _train(argv + (["--line_by_line"] if line_by_line else [])) == 0
    results = json.loads((out / "eval_results.json").read_text())
    assert results["eval_perplexity"] == pytest.approx(math.exp(results["eval_loss"]))
    assert results["eval_accuracy"] == 1.0
    train = json.loads((out / "trainer_state.json").read_text())
    assert train["global_step"] > 0


def test_cli_offline_second_corpus_error(tiny_model_dir, tmp_path, capsys):
    model = tiny_model_dir("masked-language-modeling")
    capsys.readouterr()
    code = _train(
        [
            "--model_name_or_path",
            str(model),
            "--dataset_name",
            "wikitext",
            "--dataset_name_2",
            "bookcorpus",
            "--do_train",
            "--output_dir",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "offline" in err and err.count("\n") == 1
    code = _train(
        [
            "--model_name_or_path",
            str(model),
            "--dataset_name_2",
            "bookcorpus",
            "--do_train",
            "--output_dir",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2 and "--dataset_name_2 needs --dataset_name" in capsys.readouterr().err
