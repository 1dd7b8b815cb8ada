"""QDQ rewrites on small hand-built graphs: int8 weight folding, transpose folding, gathering
embedding rows before dequantizing, integer ops."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparseforge.export import ort_fusion, verify
from sparseforge.export.qdq import (
    convert_to_integer_ops,
    fold_weight_quantization,
    gather_before_dequantize,
    name_weights,
)


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


def embedding_graph(kind: str) -> onnx.ModelProto:
    """ids -> Gather(DequantizeLinear(int8 table [10, 4])) -> Add; `kind`: the table's scales are
    per tensor, per column (axis 1) or per row (axis 0, the gathered axis). The table is also
    read by a MatMul (a tied output layer) when `kind` is per tensor."""
    rng = np.random.default_rng(3)
    table = rng.integers(-127, 128, size=(10, 4)).astype(np.int8)
    scale = {
        "tensor": np.float32(0.05),
        "column": rng.uniform(0.01, 0.1, 4).astype(np.float32),
        "row": rng.uniform(0.01, 0.1, 10).astype(np.float32),
    }[kind]
    zero = np.zeros(np.shape(scale), np.int8)
    axis = {"column": {"axis": 1}, "row": {"axis": 0}}.get(kind, {})
    nodes = [
        helper.make_node("DequantizeLinear", ["table", "scale", "zero"], ["dq"], **axis),
        helper.make_node("Gather", ["dq", "ids"], ["rows"]),
        helper.make_node("Add", ["rows", "one"], ["y"]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", 4])]
    if kind == "tensor":
        nodes.append(helper.make_node("MatMul", ["y", "dq_t"], ["logits"]))
        nodes.insert(1, helper.make_node("Transpose", ["dq"], ["dq_t"], perm=[1, 0]))
        outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s", 10]))
    inits = [
        numpy_helper.from_array(table, "table"),
        numpy_helper.from_array(np.asarray(scale), "scale"),
        numpy_helper.from_array(zero, "zero"),
        numpy_helper.from_array(np.float32(1.0), "one"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "s"])],
        outputs,
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def test_embedding_rows_are_gathered_before_dequantizing(tmp_path):
    ids = np.array([[0, 3, 9], [9, 9, 1]], np.int64)
    for kind in ("tensor", "column", "row"):
        model = embedding_graph(kind)
        path = tmp_path / f"{kind}_before.onnx"
        onnx.save(model, str(path))
        before = verify.create_session(path).run(None, {"ids": ids})
        assert gather_before_dequantize(model) == 1
        onnx.checker.check_model(model)
        # the int8 table is gathered; only the tied MatMul still reads it dequantized whole
        take = next(node for node in model.graph.node if node.op_type == "Gather")
        assert take.input[0] == "table"
        dequantized = [n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"]
        expected_dq = {"tensor": ["table", take.output[0]], "column": [take.output[0]], "row": []}
        assert sorted(dequantized) == sorted(expected_dq[kind])
        path = tmp_path / f"{kind}_after.onnx"
        onnx.save(model, str(path))
        after = verify.create_session(path).run(None, {"ids": ids})
        for got, expected in zip(after, before, strict=True):
            np.testing.assert_array_equal(got, expected)


def test_gather_of_float_or_activation_tables_is_left_alone():
    model = embedding_graph("tensor")
    model.graph.node[0].input[0] = "float_table"  # a DequantizeLinear of a graph input
    model.graph.input.append(
        helper.make_tensor_value_info("float_table", TensorProto.INT8, [10, 4])
    )
    assert gather_before_dequantize(model) == 0


@pytest.mark.parametrize("per_channel", [False, True])
def test_linear_bias_joins_its_integer_matmul(tmp_path, per_channel):
    model, _ = qdq_linear_graph(per_channel)
    fold_weight_quantization(model)
    x = np.random.default_rng(4).normal(size=(5, 6)).astype(np.float32)
    outputs = []
    for name in ("qdq", "fused"):
        if name == "fused":
            assert ort_fusion.fuse_linear_bias(model) == 1
            ops = [node.op_type for node in model.graph.node]
            assert ops == ["QuantizeLinear", "MatMulIntegerToFloat"]
            model.opset_import.append(onnx.helper.make_opsetid(ort_fusion.MS_DOMAIN, 1))
        onnx.save(model, str(tmp_path / f"{name}.onnx"))
        outputs.append(verify.create_session(tmp_path / f"{name}.onnx").run(None, {"x": x})[0])
    np.testing.assert_allclose(outputs[1], outputs[0], atol=1e-5)


def test_linear_bias_of_a_float_or_shared_matmul_stays():
    model, _ = qdq_linear_graph(per_channel=False)
    assert ort_fusion.fuse_linear_bias(model) == 0  # float weight (not folded to int8)
    fold_weight_quantization(model)
    model.graph.output.append(onnx.helper.make_tensor_value_info("mm", 1, ["batch", 4]))
    model.graph.node.append(onnx.helper.make_node("Relu", ["mm"], ["other"]))
    assert ort_fusion.fuse_linear_bias(model) == 0  # the MatMul output has another reader
