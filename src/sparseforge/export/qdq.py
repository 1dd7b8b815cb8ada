"""QDQ ONNX: fake quantization as QuantizeLinear/DequantizeLinear, int8 weights, integer ops.

1. `fake_quantize_onnx` translates the `sparseforge::fake_quantize` op (what a FakeQuantize
   module becomes while exporting) into QuantizeLinear -> DequantizeLinear with the module's
   scale and zero point: uint8 for asymmetric activations, int8 for symmetric grids. Grids
   narrower than the 8-bit type (reduce_range, < 8 bits) get a Clip first, so ONNX saturates
   where torch's fake quantization clamps.
2. `fold_weight_quantization` stores each quantized weight as an int8 initializer feeding its
   DequantizeLinear (4x smaller, what onnxruntime's QDQ fusions look for), folding the weight
   Transpose the exporter puts before MatMul into the initializer.
3. `gather_before_dequantize` gathers the rows of a quantized embedding table before
   dequantizing them: onnxruntime would otherwise dequantize the whole table (30522 x 384 for
   BERT's vocabulary) on every run, the largest cost of a batch-1 QDQ graph.
4. `convert_to_integer_ops` (`--int8_ops`) rewrites DQ -> MatMul / Gemm into MatMulInteger ->
   Cast -> Mul (-> Add bias), SparseML's integer form, for runtimes without QDQ fusion.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def fake_quantize_onnx(
    x: Any, scale: Any, zero_point: Any, axis: int, quant_min: int, quant_max: int
) -> Any:
    """onnxscript translation of `sparseforge::fake_quantize` (traced with Python attributes)."""
    from onnxscript import opset18 as op

    signed = quant_min < 0
    zp = op.Cast(zero_point, to=TensorProto.INT8 if signed else TensorProto.UINT8)
    full = (-128, 127) if signed else (0, 255)
    if (quant_min, quant_max) != full:
        low = op.Mul(
            op.Sub(
                op.Constant(value_float=float(quant_min)), op.Cast(zero_point, to=TensorProto.FLOAT)
            ),
            scale,
        )
        high = op.Mul(
            op.Sub(
                op.Constant(value_float=float(quant_max)), op.Cast(zero_point, to=TensorProto.FLOAT)
            ),
            scale,
        )
        if axis >= 0:  # per-channel grids are weights of rank 2, channels on `axis`
            other = op.Constant(value_ints=[1 - axis])
            x = op.Min(op.Max(x, op.Unsqueeze(low, other)), op.Unsqueeze(high, other))
        else:
            x = op.Clip(
                x,
                op.Reshape(low, op.Constant(value_ints=[])),
                op.Reshape(high, op.Constant(value_ints=[])),
            )
    if axis < 0:
        return op.DequantizeLinear(op.QuantizeLinear(x, scale, zp), scale, zp)
    return op.DequantizeLinear(op.QuantizeLinear(x, scale, zp, axis=axis), scale, zp, axis=axis)


def translation_table() -> dict[Callable, Callable]:
    """`custom_translation_table` for `torch.onnx.export` (dynamo exporter)."""
    import torch

    import sparseforge.modifiers.quantization.observers  # noqa: F401 - defines the op

    return {torch.ops.sparseforge.fake_quantize.default: fake_quantize_onnx}


class _Constants(dict):
    """name -> numpy array of a graph constant, converted on first use (weights can be GBs)."""

    def __init__(self, tensors: dict[str, onnx.TensorProto]):
        super().__init__()
        self.tensors = tensors

    def __contains__(self, name: object) -> bool:
        return super().__contains__(name) or name in self.tensors

    def __getitem__(self, name: str) -> np.ndarray:
        if not super().__contains__(name):
            super().__setitem__(name, numpy_helper.to_array(self.tensors[name]))
        return super().__getitem__(name)

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self else default


class _Graph:
    """Index of a graph's constants, producers and consumers for small rewrites."""

    def __init__(self, model: onnx.ModelProto):
        self.graph = model.graph
        self.initializers = {init.name: init for init in self.graph.initializer}
        tensors = dict(self.initializers)
        for node in self.graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                tensors[node.output[0]] = node.attribute[0].t
        self.constants = _Constants(tensors)
        self.reindex()

    def reindex(self) -> None:
        self.producer = {out: node for node in self.graph.node for out in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        self.graph_outputs = {out.name for out in self.graph.output}

    def add_initializer(self, array: np.ndarray, name: str) -> str:
        base, index = name, 0
        while name in self.initializers or name in self.producer:
            index += 1
            name = f"{base}_{index}"
        tensor = numpy_helper.from_array(array, name)
        self.graph.initializer.append(tensor)
        self.initializers[name] = tensor
        self.constants[name] = array
        return name

    def remove_unused(self) -> None:
        """Drop nodes whose outputs nobody reads, and initializers nobody reads."""
        changed = True
        while changed:
            self.reindex()
            keep = [
                node
                for node in self.graph.node
                if any(out in self.graph_outputs or self.consumers.get(out) for out in node.output)
            ]
            changed = len(keep) != len(self.graph.node)
            del self.graph.node[:]
            self.graph.node.extend(keep)
        self.reindex()
        used = [
            init
            for init in self.graph.initializer
            if self.consumers.get(init.name) or init.name in self.graph_outputs
        ]
        del self.graph.initializer[:]
        self.graph.initializer.extend(used)
        self.initializers = {init.name: init for init in self.graph.initializer}
        produced = set(self.producer) | set(self.initializers) | {i.name for i in self.graph.input}
        infos = [info for info in self.graph.value_info if info.name in produced]
        del self.graph.value_info[:]
        self.graph.value_info.extend(infos)


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _set_attr(node: onnx.NodeProto, name: str, value: Any) -> None:
    for attribute in list(node.attribute):
        if attribute.name == name:
            node.attribute.remove(attribute)
    node.attribute.append(helper.make_attribute(name, value))


def _quantize_array(
    weight: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int | None
) -> np.ndarray:
    info = np.iinfo(zero_point.dtype)
    if axis is not None and scale.ndim == 1 and scale.size > 1:
        shape = [1] * weight.ndim
        shape[axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    # np.rint rounds half to even, as QuantizeLinear and torch's fake quantization do.
    q = np.rint(weight / scale) + zero_point.astype(np.int32)
    return np.clip(q, info.min, info.max).astype(zero_point.dtype)


def fold_weight_quantization(model: onnx.ModelProto) -> int:
    """Replace constant-input QuantizeLinear nodes by integer initializers; fold following Transposes.

    Returns the number of weights folded.
    """
    g = _Graph(model)
    folded = 0
    for node in list(g.graph.node):
        if node.op_type != "QuantizeLinear" or node.input[0] not in g.constants:
            continue
        if any(name not in g.constants for name in node.input[1:3]) or len(node.input) < 3:
            continue
        weight = g.constants[node.input[0]].astype(np.float32)
        scale, zero_point = g.constants[node.input[1]], g.constants[node.input[2]]
        axis = _attr(node, "axis", 1) if scale.size > 1 else None
        if axis is not None and axis < 0:
            axis += weight.ndim
        quantized = _quantize_array(weight, scale, zero_point, axis)
        dequantizers = g.consumers[node.output[0]]
        if not dequantizers or any(dq.op_type != "DequantizeLinear" for dq in dequantizers):
            continue
        for dq in dequantizers:
            array, dq_axis = quantized, axis
            transposes = g.consumers[dq.output[0]]
            if (
                len(transposes) == 1
                and transposes[0].op_type == "Transpose"
                and dq.output[0] not in g.graph_outputs
            ):
                transpose = transposes[0]
                perm = _attr(transpose, "perm") or list(reversed(range(array.ndim)))
                array = np.ascontiguousarray(np.transpose(array, perm))
                if dq_axis is not None:
                    dq_axis = list(perm).index(dq_axis)
                dq.output[0] = transpose.output[0]
                transpose.output[0] = transpose.output[0] + "_unused"
            name = g.add_initializer(array, f"{node.input[0]}_quantized")
            dq.input[0] = name
            if dq_axis is not None:
                _set_attr(dq, "axis", dq_axis)
        folded += 1
    g.remove_unused()
    return folded


def gather_before_dequantize(model: onnx.ModelProto) -> int:
    """Rewrite `Gather(DequantizeLinear(int table), ids)` into `DequantizeLinear(Gather(int
    table, ids))`: the same values, dequantizing only the rows read; returns how many Gathers.

    Per-tensor scales and per-channel scales on a non-gathered axis move as they are (the axis
    counted from the end). Scales per gathered row (zero points 0) are gathered with the rows:
    `Cast(Gather(q)) * Gather(scale)`. Other consumers of the table keep its DequantizeLinear.
    """
    g = _Graph(model)
    rewritten = 0
    new_nodes: list[onnx.NodeProto] = []
    for node in g.graph.node:
        replacement = _gathered_rows(g, node) if node.op_type == "Gather" else None
        new_nodes.extend(replacement or [node])
        rewritten += replacement is not None
    del g.graph.node[:]
    g.graph.node.extend(new_nodes)
    g.remove_unused()
    return rewritten


def _gathered_rows(g: _Graph, gather: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    parts = _dq_parts(g, gather.input[0])
    if parts is None or parts[1] not in g.initializers:
        return None
    dq, table, scale, zero_point = parts
    if scale not in g.constants or zero_point not in g.constants:
        return None
    rank = len(g.initializers[table].dims)
    axis = _attr(gather, "axis", 0) % rank
    out, prefix = gather.output[0], f"{gather.name or gather.output[0]}_rows"
    take = helper.make_node(
        "Gather", [table, gather.input[1]], [f"{prefix}_q"], name=f"{prefix}_gather", axis=axis
    )
    if g.constants[scale].size == 1:
        return [
            take,
            helper.make_node(
                "DequantizeLinear", [f"{prefix}_q", scale, zero_point], [out], name=f"{prefix}_dq"
            ),
        ]
    dq_axis = _attr(dq, "axis", 1) % rank
    if dq_axis != axis:
        position = dq_axis if dq_axis < axis else dq_axis - rank  # counted from the end
        dequantize = helper.make_node(
            "DequantizeLinear",
            [f"{prefix}_q", scale, zero_point],
            [out],
            name=f"{prefix}_dq",
            axis=position,
        )
        return [take, dequantize]
    if rank != 2 or axis != 0 or np.any(g.constants[zero_point] != 0):
        return None
    column = g.add_initializer(np.array([-1], np.int64), f"{prefix}_last_axis")
    return [
        take,
        helper.make_node(
            "Cast", [f"{prefix}_q"], [f"{prefix}_f"], name=f"{prefix}_cast", to=TensorProto.FLOAT
        ),
        helper.make_node(
            "Gather", [scale, gather.input[1]], [f"{prefix}_s"], name=f"{prefix}_scales", axis=0
        ),
        helper.make_node(
            "Unsqueeze", [f"{prefix}_s", column], [f"{prefix}_su"], name=f"{prefix}_unsqueeze"
        ),
        helper.make_node("Mul", [f"{prefix}_f", f"{prefix}_su"], [out], name=f"{prefix}_mul"),
    ]


def _fingerprint(array: np.ndarray) -> tuple:
    return (
        array.shape,
        array.dtype.str,
        hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=16).digest(),
    )


def name_weights(model: onnx.ModelProto, named_arrays: dict[str, np.ndarray]) -> int:
    """Give anonymous initializers (e.g. `val_83`, a weight the optimizer transposed) the name
    of the parameter they hold (`<name>.T` when transposed), so reports name real weights."""
    anonymous = {
        init.name: init
        for init in model.graph.initializer
        if init.name not in named_arrays and len(init.dims) == 2
    }
    if not anonymous:
        return 0
    shapes = {tuple(init.dims) for init in anonymous.values()}
    index: dict[tuple, str] = {}
    for name, array in named_arrays.items():
        if array.ndim != 2:
            continue
        if array.shape in shapes:
            index.setdefault(_fingerprint(array), name)
        if array.shape[::-1] in shapes:
            index.setdefault(_fingerprint(array.T), f"{name}.T")
    existing = {init.name for init in model.graph.initializer}
    renames = {}
    for old, init in anonymous.items():
        new = index.get(_fingerprint(numpy_helper.to_array(init)))
        if new is not None and new not in existing:
            renames[old] = new
            existing.add(new)
            init.name = new
    for node in model.graph.node:
        for position, name in enumerate(node.input):
            if name in renames:
                node.input[position] = renames[name]
    return len(renames)


def _dq_parts(g: _Graph, name: str) -> tuple[onnx.NodeProto, str, str, str] | None:
    """(dq node, quantized input, scale, zero point) when `name` is a DequantizeLinear output."""
    dq = g.producer.get(name)
    if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3:
        return None
    return dq, dq.input[0], dq.input[1], dq.input[2]


def convert_to_integer_ops(model: onnx.ModelProto) -> int:
    """Rewrite DQ -> MatMul (and DQ -> Gemm) into MatMulInteger -> Cast -> Mul (-> Add); returns count."""
    g = _Graph(model)
    new_nodes: list[onnx.NodeProto] = []
    converted = 0
    for node in g.graph.node:
        replacement = None
        if node.op_type in ("MatMul", "Gemm"):
            replacement = _integer_matmul(g, node)
        if replacement is None:
            new_nodes.append(node)
        else:
            new_nodes.extend(replacement)
            converted += 1
    del g.graph.node[:]
    g.graph.node.extend(new_nodes)
    g.remove_unused()
    return converted


def _integer_matmul(g: _Graph, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    a, b = _dq_parts(g, node.input[0]), _dq_parts(g, node.input[1])
    if a is None or b is None:
        return None
    if node.op_type == "Gemm" and (
        _attr(node, "transA", 0)
        or _attr(node, "alpha", 1.0) != 1.0
        or _attr(node, "beta", 1.0) != 1.0
    ):
        return None
    _, a_q, a_scale, a_zp = a
    b_dq, b_q, b_scale, b_zp = b
    if a_scale not in g.constants or b_scale not in g.constants:
        return None
    scale_b = g.constants[b_scale]
    if scale_b.size > 1 and _attr(b_dq, "axis", 1) not in (
        -1,
        g.constants.get(b_q, np.zeros((1, 1))).ndim - 1,
    ):
        return None  # per-channel only along the output columns
    if node.op_type == "Gemm" and _attr(node, "transB", 0):
        if b_q not in g.constants:
            return None
        b_q = g.add_initializer(np.ascontiguousarray(g.constants[b_q].T), f"{b_q}_t")
    out = node.output[0]
    prefix = (node.name or out) + "_int"
    combined = g.add_initializer(
        (g.constants[a_scale] * scale_b).astype(np.float32), f"{prefix}_scale"
    )
    nodes = [
        helper.make_node(
            "MatMulInteger", [a_q, b_q, a_zp, b_zp], [f"{prefix}_i32"], name=f"{prefix}_matmul"
        ),
        helper.make_node(
            "Cast",
            [f"{prefix}_i32"],
            [f"{prefix}_f32"],
            to=TensorProto.FLOAT,
            name=f"{prefix}_cast",
        ),
    ]
    if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
        nodes.append(
            helper.make_node(
                "Mul", [f"{prefix}_f32", combined], [f"{prefix}_scaled"], name=f"{prefix}_mul"
            )
        )
        nodes.append(
            helper.make_node(
                "Add", [f"{prefix}_scaled", node.input[2]], [out], name=f"{prefix}_bias"
            )
        )
    else:
        nodes.append(
            helper.make_node("Mul", [f"{prefix}_f32", combined], [out], name=f"{prefix}_mul")
        )
    return nodes
