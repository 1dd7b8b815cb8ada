"""to_onnx: dense, pruned and QAT models -> verified deployment folders; folder safety."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from sparseforge import ExportError
from sparseforge.export import to_onnx, verify
from sparseforge.export.deployment import REPORT_FILE, _replace_folder, resolve_output_dir
from sparseforge.transformers import load_model


def report_of(folder):
    return json.loads((folder / REPORT_FILE).read_text())


def run_onnx(folder, model, batch):
    session = verify.create_session(folder / "model.onnx")
    names = [o.name for o in session.get_outputs()]
    got = session.run(names, {k: v.numpy() for k, v in batch.items()})
    with torch.no_grad():
        ref = model(**batch)
    return got, [ref[name].numpy() for name in names]


@pytest.mark.slow
def test_dense_export_with_real_text(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir("text-classification", num_hidden_layers=1)
    data = tmp_path / "dev.tsv"
    data.write_text(
        "sentence\tlabel\nthe movie was great\t1\nwhat a boring film\t0\nwe love it\t1\n"
    )
    target = to_onnx(model_dir, "sentiment_analysis", sequence_length=16, data_file=data)
    assert target == model_dir / "deployment"
    report = report_of(target)
    assert report["precision"] == "fp32" and report["task"] == "text-classification"
    assert report["samples"] == {"source": str(data), "count": 3}
    assert report["verification"]["passed"] and report["verification"]["max_abs_diff"] < 1e-4
    assert [8, 16] != report["verification"]["input_shapes"][
        1
    ]  # second batch: other batch and length
    assert "QuantizeLinear" not in report["node_counts"]
    assert report["file_size_bytes"] == (target / "model.onnx").stat().st_size
    for name in ("config.json", "tokenizer_config.json", "model.onnx"):
        assert (target / name).is_file()
    assert not (target / "recipe.yaml").exists()
    proto = onnx.load(str(target / "model.onnx"))
    dims = [[d.dim_param for d in i.type.tensor_type.shape.dim] for i in proto.graph.input]
    assert all(d == ["batch", "sequence"] for d in dims)
    # any batch size and length, against the PyTorch model
    model = load_model(model_dir, "text-classification")
    ids = torch.randint(5, 100, (3, 7))
    got, ref = run_onnx(
        target,
        model,
        {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "token_type_ids": torch.zeros_like(ids),
        },
    )
    assert np.abs(got[0] - ref[0]).max() < 1e-4


@pytest.mark.slow
def test_pruned_export_reports_sparsity(pruned_model_dir):
    target = to_onnx(pruned_model_dir, "text-classification", sequence_length=16)
    report = report_of(target)
    sparsity = report["weight_sparsity"]
    encoder = {
        name: info
        for name, info in sparsity.items()
        if "encoder" in name and info["dtype"] == "float32"
    }
    assert encoder and all(info["sparsity"] >= 0.69 for info in encoder.values())
    assert report["verification"]["passed"]


@pytest.mark.slow
def test_qat_export_is_qdq_int8_and_keeps_sparsity(qat_model_dir):
    model_dir = qat_model_dir("text-classification")
    target = to_onnx(model_dir, "glue", sequence_length=16)
    report = report_of(target)
    assert report["precision"] == "int8 QDQ"
    assert (
        report["node_counts"]["QuantizeLinear"] > 0
        and report["node_counts"]["DequantizeLinear"] > 0
    )
    optimized = report["onnxruntime_optimized_node_counts"]
    assert (
        optimized.get("MatMulIntegerToFloat", 0) + optimized.get("QLinearMatMul", 0) >= 12
    )  # 2 layers x 6 linears
    assert report["verification"]["passed"]
    assert (target / "recipe.yaml").read_text() == (model_dir / "recipe.yaml").read_text()
    int8 = {
        name: info for name, info in report["weight_sparsity"].items() if info["dtype"] == "int8"
    }
    encoder = {name: info for name, info in int8.items() if "encoder" in name}
    assert len(encoder) == 12 and all(info["sparsity"] >= 0.69 for info in encoder.values())
    # the int8 weights are the fake-quantized weights of the reloaded model
    model = load_model(model_dir, "text-classification")
    proto = onnx.load(str(target / "model.onnx"))
    stored = {init.name: onnx.numpy_helper.to_array(init) for init in proto.graph.initializer}
    query = model.bert.encoder.layer[0].attention.self.query
    expected = (
        torch.round(query.weight / query.weight_fake_quant.scale)
        .clamp(-128, 127)
        .to(torch.int8)
        .numpy()
    )
    matches = [
        name
        for name, array in stored.items()
        if array.dtype == np.int8 and array.shape == (32, 32) and np.array_equal(array.T, expected)
    ]
    assert matches


@pytest.mark.slow
def test_per_channel_qat_export_runs_integer_kernels_with_a_scale_per_output_channel(qat_model_dir):
    model_dir = qat_model_dir("text-classification", per_channel=True)
    target = to_onnx(model_dir, "glue", sequence_length=16)
    report = report_of(target)
    assert report["verification"]["passed"]
    optimized = report["onnxruntime_optimized_node_counts"]
    assert optimized.get("MatMulIntegerToFloat", 0) + optimized.get("QLinearMatMul", 0) >= 12
    proto = onnx.load(str(target / "model.onnx"))
    stored = {init.name: onnx.numpy_helper.to_array(init) for init in proto.graph.initializer}
    model = load_model(model_dir, "text-classification")
    query = model.bert.encoder.layer[0].attention.self.query
    scale = query.weight_fake_quant.scale.detach().numpy()
    assert scale.shape == (32,) and len(np.unique(scale)) > 1  # one scale per output row
    per_row = [
        array for array in stored.values() if array.dtype == np.float32 and array.shape == (32,)
    ]
    assert any(np.allclose(array, scale) for array in per_row)


@pytest.mark.slow
def test_failed_verification_leaves_nothing(tiny_model_dir, monkeypatch):
    model_dir = tiny_model_dir("token-classification", num_hidden_layers=1)
    monkeypatch.setattr(verify, "FP32_TOLERANCE", -1.0)
    with pytest.raises(ExportError, match="beyond tolerance"):
        to_onnx(model_dir, "ner", sequence_length=8)
    assert (
        sorted(
            p.name for p in model_dir.iterdir() if p.name.startswith(".") or p.name == "deployment"
        )
        == []
    )


def test_existing_folders_are_protected(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir("text-classification")
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="--overwrite"):
        to_onnx(model_dir, "text-classification", output_dir=user)
    assert (user / "notes.txt").read_text() == "keep me"
    with pytest.raises(ExportError, match="model folder"):
        resolve_output_dir(model_dir, model_dir, overwrite=True)
    with pytest.raises(ExportError, match="model folder"):
        resolve_output_dir(model_dir, model_dir.parent, overwrite=True)
    assert resolve_output_dir(model_dir, user, overwrite=True) == user

    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / "model.onnx").write_bytes(b"old")
    (previous / REPORT_FILE).write_text(
        json.dumps({"generator": "sparseforge", "files": ["model.onnx", REPORT_FILE]})
    )
    assert resolve_output_dir(model_dir, previous, overwrite=False) == previous
    (previous / "extra.txt").write_text("added by the user")
    with pytest.raises(ExportError):
        resolve_output_dir(model_dir, previous, overwrite=False)


def test_replace_folder_swaps_complete_folders(tmp_path):
    staging, target = tmp_path / "staging", tmp_path / "target"
    staging.mkdir()
    (staging / "new").write_text("1")
    target.mkdir()
    (target / "old").write_text("0")
    _replace_folder(staging, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]
    assert [p.name for p in target.iterdir()] == ["new"]


@pytest.mark.slow
def test_an_export_that_writes_another_opset_than_asked_fails(
    tiny_model_dir, tmp_path, monkeypatch
):
    from sparseforge.export import deployment

    real_export = deployment.export_onnx
    monkeypatch.setattr(
        deployment, "export_onnx", lambda *a, opset, **kw: real_export(*a, opset=18, **kw)
    )
    with pytest.raises(ExportError, match="asked for opset 20, the exporter wrote opset 18"):
        to_onnx(
            tiny_model_dir("text-classification"),
            "text-classification",
            sequence_length=16,
            opset=20,
            output_dir=tmp_path / "d",
        )
    assert not (tmp_path / "d").exists()
