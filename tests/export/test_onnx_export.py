"""export_onnx: dynamic axes with the dynamo exporter, QDQ translation, errors as ExportError."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from conftest import make_tiny_model

from sparseforge import ExportError
from sparseforge.export import export_onnx, verify
from sparseforge.modifiers.quantization import QuantizationModifier, fake_quantizers


@pytest.mark.slow
def test_qdq_export_runs_any_shape_and_matches_fake_quant(tmp_path):
    model = make_tiny_model("token-classification", num_hidden_layers=1)
    QuantizationModifier(submodules=["bert.encoder"], reduce_range=True).apply_structure(model)
    for quantizer in fake_quantizers(model).values():
        quantizer.observer_enabled = True
    calibration = torch.randint(5, 100, (4, 12))
    model(input_ids=calibration)
    for quantizer in fake_quantizers(model).values():
        quantizer.observer_enabled = False
    ids = torch.randint(5, 100, (2, 10))
    sample = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    stats = export_onnx(model, sample, ["logits"], tmp_path / "m.onnx")
    assert stats["folded_weights"] == 6
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert "token_type_ids" not in [i.name for i in proto.graph.input]
    ops = {node.op_type for node in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert (
        "Clip" in ops or {"Min", "Max"} <= ops
    )  # reduce_range: saturate at 127 before QuantizeLinear
    session = verify.create_session(tmp_path / "m.onnx")
    for shape in ((1, 5), (3, 17)):
        ids = torch.randint(5, 100, shape)
        mask = torch.ones_like(ids)
        mask[0, -2:] = 0
        got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        with torch.no_grad():
            ref = model(input_ids=ids, attention_mask=mask).logits.numpy()
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= 0.1 * max(1.0, np.abs(ref).max())


class Broken(torch.nn.Module):
    def forward(self, input_ids, return_dict=True):
        raise RuntimeError("cannot trace this")


def test_bad_inputs_and_exporter_failures_raise_export_error(tmp_path):
    model = make_tiny_model("text-classification")
    with pytest.raises(ExportError, match="input_ids"):
        export_onnx(model, {"pixel_values": torch.zeros(1, 3)}, ["logits"], tmp_path / "x.onnx")
    with pytest.raises(ExportError, match="torch.onnx.export failed"):
        export_onnx(
            Broken(),
            {"input_ids": torch.zeros(1, 4, dtype=torch.long)},
            ["logits"],
            tmp_path / "x.onnx",
        )
    assert not (tmp_path / "x.onnx").exists()
