"""QDQ rewrites on small hand-built graphs: int8 weight folding, transpose folding, integer ops."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sparseforge.export import verify
from sparseforge.export.qdq import convert_to_integer_ops, fold_weight_quantization, name_weights


def qdq_linear_graph(per_channel: bool) -> tuple[onnx.ModelProto, np.ndarray]:
    """x -> Q/DQ (uint8) ; W -> Q/DQ (int8) -> Transpose ; MatMul ; Add bias."""
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(4, 6)).astype(np.float32)
    weight[rng.random(weight.shape) < 0.5] = 0.0
    w_scale = (
        (np.abs(weight).max(axis=1) / 127.5).astype(np.float32)
        if per_channel
        else np.float32(np.abs(weight).max() / 127.5)
    )
    inits = [
        numpy_helper.from_array(weight, "weight"),
        numpy_helper.from_array(np.asarray(w_scale, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(4, np.int8) if per_channel else np.int8(0), "w_zp"),
        numpy_helper.from_array(np.float32(0.02), "x_scale"),
        numpy_helper.from_array(np.uint8(128), "x_zp"),
        numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "bias"),
    ]
    axis = {"axis": 0} if per_channel else {}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"]),
        helper.make_node("QuantizeLinear", ["weight", "w_scale", "w_zp"], ["wq"], **axis),
        helper.make_node("DequantizeLinear", ["wq", "w_scale", "w_zp"], ["wd"], **axis),
        helper.make_node("Transpose", ["wd"], ["wt"], perm=[1, 0]),
        helper.make_node("MatMul", ["xd", "wt"], ["mm"]),
        helper.make_node("Add", ["mm", "bias"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        inits,
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10
    ), weight


def run(model: onnx.ModelProto, x: np.ndarray, tmp_path, name: str) -> np.ndarray:
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return verify.create_session(path).run(None, {"x": x})[0]


def test_fold_stores_int8_weights_and_folds_transpose(tmp_path):
    for per_channel in (False, True):
        model, weight = qdq_linear_graph(per_channel)
        x = np.random.default_rng(1).normal(size=(3, 6)).astype(np.float32)
        before = run(model, x, tmp_path, f"before{per_channel}")
        assert fold_weight_quantization(model) == 1
        onnx.checker.check_model(model)
        ops = [node.op_type for node in model.graph.node]
        assert "Transpose" not in ops and ops.count("QuantizeLinear") == 1
        stored = [
            numpy_helper.to_array(i)
            for i in model.graph.initializer
            if i.data_type == TensorProto.INT8 and len(i.dims) == 2
        ]
        assert len(stored) == 1 and stored[0].shape == (6, 4)
        assert np.array_equal(stored[0].T == 0, weight == 0)  # pruned zeros are int8 zeros
        assert "weight" not in {i.name for i in model.graph.initializer}
        np.testing.assert_allclose(
            run(model, x, tmp_path, f"after{per_channel}"), before, atol=1e-6
        )
        if per_channel:
            dq = next(
                n
                for n in model.graph.node
                if n.op_type == "DequantizeLinear" and n.input[0] != "xq"
            )
            assert helper.get_attribute_value(dq.attribute[0]) == 1


def test_integer_ops_match_qdq(tmp_path):
    model, _ = qdq_linear_graph(per_channel=True)
    fold_weight_quantization(model)
    x = np.random.default_rng(2).normal(size=(5, 6)).astype(np.float32)
    expected = run(model, x, tmp_path, "qdq")
    assert convert_to_integer_ops(model) == 1
    ops = [node.op_type for node in model.graph.node]
    assert "MatMulInteger" in ops and "MatMul" not in ops and "DequantizeLinear" not in ops
    np.testing.assert_allclose(run(model, x, tmp_path, "int"), expected, atol=1e-5)


def test_name_weights_restores_parameter_names():
    model, weight = qdq_linear_graph(per_channel=False)
    model.graph.initializer[0].name = "val_7"
    for node in model.graph.node:
        node.input[:] = ["val_7" if name == "weight" else name for name in node.input]
    assert name_weights(model, {"encoder.weight": np.ascontiguousarray(weight.T)}) == 1
    assert "encoder.weight.T" in {i.name for i in model.graph.initializer}
    assert any("encoder.weight.T" in node.input for node in model.graph.node)
