"""`sparseforge export onnx`: a QAT question-answering checkpoint with SparseML's alias and --int8_ops."""

from __future__ import annotations

import json

import pytest

from sparseforge.cli import main
from sparseforge.export.cli import build_parser


@pytest.mark.slow
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


def _export(model_dir, out, *extra):
    return main(
        [
            "export",
            "onnx",
            "--model_path",
            str(model_dir),
            "--task",
            "text-classification",
            "--sequence_length",
            "16",
            "--output_dir",
            str(out),
            *extra,
        ]
    )


@pytest.mark.parametrize(
    "case, message",
    [
        (["--opset", "5"], "--opset 5 is not supported by torch's ONNX exporter; valid: 18 to 23"),
        (["--opset", "30"], "valid: 18 to 23"),
        (["--num_samples", "0"], "--num_samples must be >= 1"),
        ("truncated weights", "model.safetensors is damaged (truncated"),
        ("no tokenizer", "has no tokenizer: none of tokenizer.json, vocab.txt"),
    ],
)
def test_bad_export_invocations_are_one_line_errors(
    tiny_model_dir, tmp_path, capsys, case, message
):
    model_dir = tiny_model_dir("text-classification")
    if case == "truncated weights":
        weights = model_dir / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    if case == "no tokenizer":
        for path in model_dir.iterdir():
            if path.name.startswith(("tokenizer", "vocab", "special_tokens")):
                path.unlink()
    out = tmp_path / "deploy"
    capsys.readouterr()
    assert _export(model_dir, out, *(case if isinstance(case, list) else [])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and err[0].startswith("sparseforge export: error:") and message in err[0]
    ), err
    assert not out.exists()


@pytest.mark.slow
def test_report_states_the_opset_of_the_written_file(tiny_model_dir, tmp_path, capsys):
    import onnx

    from sparseforge.export.deployment import written_opset

    out = tmp_path / "deploy"
    assert _export(tiny_model_dir("text-classification"), out, "--opset", "18") == 0
    assert "opset 18" in capsys.readouterr().out
    assert json.loads((out / "export_report.json").read_text())["opset"] == 18
    assert written_opset(onnx.load(str(out / "model.onnx"))) == 18
