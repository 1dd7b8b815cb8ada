"""Verification helpers: tolerance rule, node counts, sparsity of stored weights, comparison."""

from __future__ import annotations

import numpy as np
import torch
from onnx import TensorProto, helper, numpy_helper

from sparseforge.export import verify


def test_tolerance_rule_scales_with_outputs():
    small = {"max_abs_diff": 5e-5, "mean_abs_diff": 1e-6, "max_abs_output": 0.5}
    assert verify.tolerance_check(small, quantized=False)[0]
    assert not verify.tolerance_check({**small, "max_abs_diff": 2e-4}, quantized=False)[0]
    big = {"max_abs_diff": 2e-4, "mean_abs_diff": 1e-5, "max_abs_output": 10.0}
    assert verify.tolerance_check(big, quantized=False)[0]
    q = {"max_abs_diff": 0.5, "mean_abs_diff": 0.05, "max_abs_output": 8.0}
    ok, bounds = verify.tolerance_check(q, quantized=True)
    assert ok and bounds["max_abs_diff"] == 0.8
    assert not verify.tolerance_check({**q, "mean_abs_diff": 0.5}, quantized=True)[0]


def test_sparsity_counts_zero_points_and_node_counts():
    weight = np.array([[0, 3, 0, -2], [0, 0, 1, 0]], dtype=np.int8)
    asym = np.array([[5, 5, 7, 5], [1, 5, 5, 5]], dtype=np.uint8)
    graph = helper.make_graph(
        [
            helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wd"]),
            helper.make_node("DequantizeLinear", ["a", "s", "za"], ["ad"]),
            helper.make_node("Add", ["wd", "ad"], ["y"]),
        ],
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [
            numpy_helper.from_array(weight, "w"),
            numpy_helper.from_array(asym, "a"),
            numpy_helper.from_array(np.float32(0.1), "s"),
            numpy_helper.from_array(np.int8(0), "z"),
            numpy_helper.from_array(np.uint8(5), "za"),
        ],
    )
    model = helper.make_model(graph)
    sparsity = verify.weight_sparsity(model)
    assert sparsity["w"]["sparsity"] == 5 / 8 and sparsity["w"]["dtype"] == "int8"
    assert sparsity["a"]["sparsity"] == 6 / 8
    assert verify.node_counts(model) == {"Add": 1, "DequantizeLinear": 2}
    assert verify.is_quantized_graph(model)


class FakeSession:
    def __init__(self, offset: float):
        self.offset = offset

    def run(self, names, feeds):
        return [
            feeds["input_ids"].astype(np.float32)[..., None] * np.ones(3, np.float32) + self.offset
        ]


class Echo(torch.nn.Module):
    def forward(self, input_ids, return_dict=True):
        return {"logits": input_ids.float()[..., None] * torch.ones(3)}


def test_compare_reports_max_mean_and_agreement():
    batches = [{"input_ids": torch.tensor([[1, 2], [3, 4]])}, {"input_ids": torch.tensor([[5]])}]
    result = verify.compare(FakeSession(0.25), Echo(), batches, ["logits"])
    assert result["max_abs_diff"] == 0.25 and result["mean_abs_diff"] == 0.25
    assert result["max_abs_output"] == 5.0 and result["argmax_agreement"] == 1.0
    assert result["input_shapes"] == [[2, 2], [1, 1]]


def test_file_size_includes_external_data(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"x" * 10)
    assert verify.file_size(tmp_path / "model.onnx") == 10
    (tmp_path / "model.data").write_bytes(b"y" * 5)
    assert verify.file_size(tmp_path / "model.onnx") == 15
    (tmp_path / "other.data").write_bytes(b"z" * 7)  # another file's data is not this model's
    assert verify.file_size(tmp_path / "model.onnx") == 15
