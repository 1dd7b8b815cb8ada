"""Reading data files: formats, GLUE tsv layouts, validation_ratio, errors, offline hub."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sparseforge.errors import DataError
from sparseforge.transformers.data import (
    hold_out,
    load_hub_dataset,
    load_raw_datasets,
    read_data_file,
    require_columns,
    take_first,
)


def test_formats(tmp_path):
    (tmp_path / "a.csv").write_text('text,label\n"hello, world",1\nbye,0\n')
    (tmp_path / "a.jsonl").write_text(
        '{"text": "hello", "label": [1, 2]}\n{"text": "bye", "label": [0]}\n'
    )
    (tmp_path / "b.json").write_text(
        '{"data": [{"text": "x", "label": 1}, {"text": "y", "label": 0}]}'
    )
    csv_data = read_data_file(tmp_path / "a.csv")
    assert csv_data[0] == {"text": "hello, world", "label": 1}
    assert read_data_file(tmp_path / "a.jsonl")["label"] == [[1, 2], [0]]
    assert read_data_file(tmp_path / "b.json")["text"] == ["x", "y"]
    csv_data.to_parquet(str(tmp_path / "a.parquet"))
    assert read_data_file(tmp_path / "a.parquet")["text"] == ["hello, world", "bye"]


def test_glue_tsv_layouts(tmp_path):
    sst2 = tmp_path / "sst2.tsv"
    sst2.write_text("sentence\tlabel\nit 's a \" quoted film \t1\nnull \t0\n")
    rows = read_data_file(sst2, task_name="sst2")
    assert rows["sentence"] == ["it 's a \" quoted film ", "null "] and rows["label"] == [1, 0]
    cola = tmp_path / "cola.tsv"
    cola.write_text("gj04\t1\t\tthe book was read .\ngj04\t0\t*\tbook the read .\n")
    assert read_data_file(cola, task_name="cola")["sentence"] == [
        "the book was read .",
        "book the read .",
    ]
    mrpc = tmp_path / "mrpc.tsv"
    mrpc.write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\ta b\tc d\n")
    assert read_data_file(mrpc, task_name="mrpc")[0] == {
        "label": 1,
        "#1 ID": 1,
        "#2 ID": 2,
        "sentence1": "a b",
        "sentence2": "c d",
    }


def test_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_data_file(tmp_path / "none.csv", flag="--train_file")
    (tmp_path / "x.xlsx").write_text("x")
    with pytest.raises(DataError, match="unsupported format"):
        read_data_file(tmp_path / "x.xlsx")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read"):
        read_data_file(tmp_path / "bad.json")
    (tmp_path / "empty.csv").write_text("text,label\n")
    with pytest.raises(DataError, match="empty.csv"):
        read_data_file(tmp_path / "empty.csv")


def test_offline_hub_is_one_line_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="offline; pass local files with --train_file") as info:
        load_hub_dataset("nyu-mll/glue", "sst2")
    assert "\n" not in str(info.value)
    args = SimpleNamespace(
        train_file=None,
        validation_file=None,
        test_file=None,
        dataset_name=None,
        validation_ratio=None,
    )
    with pytest.raises(DataError, match="offline"):
        load_raw_datasets(args, task_name="sst2")


def test_validation_ratio_take_first_and_columns(tmp_path):
    (tmp_path / "t.csv").write_text(
        "text,label\n" + "".join(f"row {i},{i % 2}\n" for i in range(20))
    )
    args = SimpleNamespace(
        train_file=str(tmp_path / "t.csv"),
        validation_file=None,
        test_file=None,
        dataset_name=None,
        validation_ratio=0.25,
    )
    raw = hold_out(load_raw_datasets(args), args.validation_ratio, seed=1)
    assert len(raw["train"]) == 15 and len(raw["validation"]) == 5
    assert not set(raw["train"]["text"]) & set(raw["validation"]["text"])
    assert len(take_first(raw["train"], 4)) == 4 and len(take_first(raw["train"], 400)) == 15
    with pytest.raises(DataError, match="no column 'body'.*--input_column_names.*text, label"):
        require_columns(raw["train"], ["body"], split="train", flag="--input_column_names")
