"""Verification samples: data files (tsv/csv/jsonl), text pairs, two differently shaped batches."""

from __future__ import annotations

import json

import pytest
from conftest import write_tokenizer

from sparseforge import DataError
from sparseforge.export.samples import read_texts, sample_batches


def test_read_tsv_csv_jsonl(tmp_path):
    tsv = tmp_path / "dev.tsv"
    tsv.write_text('sentence\tlabel\nit \'s a "good" film\t1\nbad\t0\nfun\t1\n')
    assert read_texts(tsv, 2) == ['it \'s a "good" film', "bad"]
    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text("premise,hypothesis,label\na man,a person,0\n")
    assert read_texts(csv_file, 5) == [("a man", "a person")]
    jsonl = tmp_path / "qa.jsonl"
    jsonl.write_text(
        "\n".join(json.dumps({"question": f"who {i}", "context": "john said"}) for i in range(3))
    )
    assert read_texts(jsonl, 5)[0] == ("who 0", "john said")
    tokens = tmp_path / "ner.json"
    tokens.write_text(json.dumps([{"tokens": ["john", "said"], "ner_tags": [1, 0]}]))
    assert read_texts(tokens, 5) == ["john said"]


def test_read_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_texts(tmp_path / "missing.tsv", 3)
    bad = tmp_path / "x.tsv"
    bad.write_text("a\tb\n1\t2\n")
    with pytest.raises(DataError, match="text_column"):
        read_texts(bad, 3)
    assert read_texts(bad, 3, text_column="b") == ["2"]
    parquet = tmp_path / "x.parquet"
    parquet.write_text("")
    with pytest.raises(DataError, match="unsupported"):
        read_texts(parquet, 3)


def test_two_batches_differ_in_batch_and_length(tmp_path):
    tokenizer = write_tokenizer(tmp_path / "tok")
    full, short = sample_batches(tokenizer, "question-answering", 24)
    assert full["input_ids"].shape == (8, 24)
    assert short["input_ids"].shape[0] == 5 and short["input_ids"].shape[1] <= 12
    assert set(full) == {"input_ids", "attention_mask", "token_type_ids"}
    assert int(full["token_type_ids"].max()) == 1  # question/context pairs
    single = sample_batches(tokenizer, "text-classification", 16, texts=["good"])
    assert single[0]["input_ids"].shape == (2, 16)
