"""`sparseforge export onnx`: a QAT question-answering checkpoint with SparseML's alias and --int8_ops."""

from __future__ import annotations

import json

import pytest

from sparseforge.cli import main
from sparseforge.export.cli import build_parser


def test_export_onnx_int8_ops(qat_model_dir, tmp_path, capsys):
    model_dir = qat_model_dir("question-answering")
    out = tmp_path / "deploy"
    code = main(
        [
            "export",
            "onnx",
            "--model_path",
            str(model_dir),
            "--task",
            "qa",
            "--sequence_length",
            "24",
            "--output_dir",
            str(out),
            "--int8_ops",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "int8 integer ops" in printed and str(out) in printed
    report = json.loads((out / "export_report.json").read_text())
    assert report["outputs"] == ["start_logits", "end_logits"]
    assert report["node_counts"]["MatMulInteger"] >= 12
    assert report["rewrites"]["integer_matmuls"] >= 12
    assert report["verification"]["passed"]
    assert sorted(report["files"]) == sorted(p.name for p in out.iterdir())


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["export", "onnx", "--model_path", str(tmp_path), "--task", "summarization"]) == 2
    assert "unknown task 'summarization'" in capsys.readouterr().err
    assert main(["export", "onnx", "--model_path", str(tmp_path / "missing"), "--task", "qa"]) == 2
    assert "config.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["onnx", "--task", "qa"])
