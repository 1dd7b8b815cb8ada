"""onnxruntime's transformer fusions (Attention, EmbedLayerNormalization, SkipLayerNormalization,
BiasGelu) applied to sparseforge's dynamo exports.

onnxruntime's fastest CPU path for BERT-class encoders runs its fused contrib kernels, which its
Python optimizer (`onnxruntime.transformers.optimizer`) makes by matching the subgraphs the
TorchScript exporter emits. torch's dynamo exporter emits the same math in shapes these patterns
miss, so only the normalisation and Gelu fusions applied to a sparseforge export. Four small,
value-preserving rewrites make the patterns match before the optimizer runs:

1. SDPA attention is exported in its eager form (`fusable_attention`): the SDPA decomposition
   (scaled Q and K, a NaN guard after Softmax) matches no attention pattern.
2. `canonical_attention_mask`: transformers builds the key-padding mask from `attention_mask`
   through index arithmetic (Range, GatherND, And, Where); the score Adds are fed instead
   `Where(mask[:, None, None, :] == 0, finfo.min, 0)` (the same values) in the form onnxruntime's
   fusion recognises and turns into the kernel's mask input.
3. `pin_head_counts`: the exporter reshapes Q, K and V to `[batch, sequence, -1, head_size]`;
   the -1 becomes the layer's own head count (read from its Q weight), so the optimizer detects
   the heads per layer. Structurally pruned layers with different head counts fuse too.
4. `canonical_position_ids`: the position-ids Slice takes its end from `Shape(input_ids)[1]`
   (the exporter picks any input with the sequence axis), the form EmbedLayerNormalization
   fusion looks for.

The fused graph uses onnxruntime contrib ops (domain com.microsoft): it runs in onnxruntime
only, so the step can be turned off (`optimize=False`, `--no_ort_fusion`). It is kept only when
onnxruntime's outputs still match PyTorch's within the export tolerance.

QDQ graphs (QAT): the attention fusion needs float Q/K/V weights and input, so
`expose_qdq_attention` hands it the dequantized values and `quantize_attention` turns each fused
Attention into onnxruntime's integer `QAttention` with the QAT scales (int8 weights, uint8
input). QAttention computes Q.K^T and probs.V in float: where QAT also quantized those matmuls'
inputs (the default; `exclude_module_types: [QATMatMul]` turns it off) the attention does not
fuse, and the graph keeps its quantized attention matmuls.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from sparseforge.export.onnx_export import save_model

logger = logging.getLogger(__name__)

# The fused op types reported (node counts in the final graph).
FUSED_OPS = (
    "Attention",
    "QAttention",
    "MultiHeadAttention",
    "EmbedLayerNormalization",
    "SkipLayerNormalization",
    "BiasGelu",
    "FastGelu",
)
MASK_INPUT = "attention_mask"
MS_DOMAIN = "com.microsoft"
_PREFIX = "sparseforge_fusion"


@contextlib.contextmanager
def fusable_attention(model: torch.nn.Module) -> Iterator[None]:
    """Export SDPA attention as eager attention (the form onnxruntime fuses; the same math), and
    put SDPA back after. Other implementations are kept: sparseforge's QAT attention is already
    in the eager form, and its fake-quantized matmul inputs must stay in the graph."""
    config = getattr(model, "config", None)
    switch = getattr(config, "_attn_implementation", None) == "sdpa"
    if switch and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch and hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation("sdpa")


class _Index:
    """Producers, consumers and constants of a graph, for the rewrites below."""

    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.graph = graph
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.initializers = {init.name: init for init in graph.initializer}
        self.inputs = {value.name for value in graph.input}

    def constant(self, name: str) -> np.ndarray | None:
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
        return None

    def parent(self, node: onnx.NodeProto, index: int) -> onnx.NodeProto | None:
        return self.producer.get(node.input[index]) if index < len(node.input) else None

    def weight_shape(self, name: str) -> tuple[int, ...] | None:
        """Shape of a MatMul weight: an initializer or an initializer behind DequantizeLinear."""
        if name in self.initializers:
            return tuple(self.initializers[name].dims)
        node = self.producer.get(name)
        if node is not None and node.op_type == "DequantizeLinear":
            return self.weight_shape(node.input[0])
        return None


def _add_nodes(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> None:
    """Insert `nodes` at the front (they read only graph inputs and constants).

    The graph's nodes are copied: references to them taken before are stale afterwards.
    """
    existing = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes + existing)


def _score_adds(index: _Index) -> list[tuple[onnx.NodeProto, int]]:
    """(Add, mask input position) for each `Softmax(scores * scale + mask)` in the graph."""
    found = []
    for node in index.graph.node:
        if node.op_type != "Softmax":
            continue
        add = index.producer.get(node.input[0])
        if add is None or add.op_type != "Add":
            continue
        for position in (0, 1):
            scaled = index.parent(add, 1 - position)
            if scaled is not None and scaled.op_type in ("Mul", "Div"):
                scores = index.parent(scaled, 0)
                if scores is not None and scores.op_type == "MatMul":
                    found.append((add, position))
                    break
    return found


def _depends_on(index: _Index, name: str, source: str) -> bool:
    """Whether tensor `name` is computed from graph input `source`."""
    seen, stack = set(), [name]
    while stack:
        current = stack.pop()
        if current == source:
            return True
        if current in seen:
            continue
        seen.add(current)
        node = index.producer.get(current)
        if node is not None:
            stack.extend(node.input)
    return False


def canonical_attention_mask(model: onnx.ModelProto) -> int:
    """Feed every attention score Add the additive key-padding mask in the form onnxruntime's
    attention fusion recognises; returns how many Adds were rewired.

    The form is the TorchScript export of transformers' SDPA mask: `Where(Cast(1 - Cast(Expand(
    mask[:, None, None, :])), bool), finfo.min, 0)`: 0 where a key is attended, finfo.min where
    it is padding, the values transformers' eager mask holds. Only masks computed from the
    `attention_mask` input are replaced (a key-padding mask is what a BERT-class encoder builds
    from it); the export verification checks the values on padded samples.
    """
    index = _Index(model)
    if MASK_INPUT not in index.inputs:
        return 0
    adds = [
        (add, pos)
        for add, pos in _score_adds(index)
        if _depends_on(index, add.input[pos], MASK_INPUT)
    ]
    if not adds:
        return 0
    out = f"{_PREFIX}_additive_mask"
    constants = {
        "axis1": np.array([1], np.int64),
        "axis2": np.array([2], np.int64),
        "shape": np.array([1], np.int64),
        "one": np.array(1.0, np.float32),
        "low": np.array(np.finfo(np.float32).min, np.float32),
        "zero": np.array(0.0, np.float32),
    }
    for key, value in constants.items():
        model.graph.initializer.append(numpy_helper.from_array(value, f"{out}_{key}"))
    chain = [
        ("Unsqueeze", [MASK_INPUT, f"{out}_axis1"], {}),
        ("Unsqueeze", [f"{out}_0", f"{out}_axis2"], {}),
        ("Expand", [f"{out}_1", f"{out}_shape"], {}),
        ("Cast", [f"{out}_2"], {"to": TensorProto.FLOAT}),
        ("Sub", [f"{out}_one", f"{out}_3"], {}),
        ("Cast", [f"{out}_4"], {"to": TensorProto.BOOL}),
        ("Where", [f"{out}_5", f"{out}_low", f"{out}_zero"], {}),
    ]
    nodes = [
        helper.make_node(op, inputs, [f"{out}_{i}"], f"{out}_{op}_{i}", **attrs)
        for i, (op, inputs, attrs) in enumerate(chain)
    ]
    for add, position in adds:  # before _add_nodes, which copies the graph's nodes
        add.input[position] = nodes[-1].output[0]
    _add_nodes(model, nodes)
    return len(adds)


def _projection_width(index: _Index, reshape: onnx.NodeProto) -> int | None:
    """Output width of the Linear (MatMul [+ Add]) feeding `reshape`, None if not a projection."""
    node = index.parent(reshape, 0)
    if node is not None and node.op_type == "Add":
        node = next(
            (
                p
                for p in (index.parent(node, 0), index.parent(node, 1))
                if p and p.op_type == "MatMul"
            ),
            None,
        )
    if node is None or node.op_type != "MatMul":
        return None
    shape = index.weight_shape(node.input[1])
    return shape[-1] if shape and len(shape) == 2 else None


def pin_head_counts(model: onnx.ModelProto) -> int:
    """Replace the -1 of `[batch, seq, -1, head_size]` head reshapes by each layer's head count."""
    index = _Index(model)
    created: dict[tuple[str, int], str] = {}
    new_nodes = []
    for node in index.graph.node:
        if node.op_type != "Reshape":
            continue
        concat = index.parent(node, 1)
        if concat is None or concat.op_type != "Concat" or len(concat.input) != 4:
            continue
        heads, head_size = index.constant(concat.input[2]), index.constant(concat.input[3])
        width = _projection_width(index, node)
        if (
            heads is None
            or head_size is None
            or heads.size != 1
            or head_size.size != 1
            or not width
        ):
            continue
        if int(heads.reshape(-1)[0]) != -1 or width % int(head_size.reshape(-1)[0]):
            continue
        count = width // int(head_size.reshape(-1)[0])
        key = (concat.output[0], count)
        if key not in created:
            name = f"{_PREFIX}_{concat.output[0]}_heads{count}"
            const = numpy_helper.from_array(np.array([count], heads.dtype), f"{name}_value")
            model.graph.initializer.append(const)
            inputs = [concat.input[0], concat.input[1], const.name, concat.input[3]]
            new_nodes.append((concat, helper.make_node("Concat", inputs, [name], name, axis=0)))
            created[key] = name
        node.input[1] = created[key]
    for concat, new in new_nodes:  # right after the original Concat, whose inputs it shares
        position = list(model.graph.node).index(concat)
        model.graph.node.insert(position + 1, new)
    return len(created)


def _is_sequence_length(index: _Index, name: str) -> bool:
    """`name` is `Shape(x, start=1, end=2)` of a graph input x (the exporter's sequence length)."""
    node = index.producer.get(name)
    if node is None or node.op_type != "Shape" or node.input[0] not in index.inputs:
        return False
    attrs = {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}
    return attrs.get("start") == 1 and attrs.get("end") == 2


def canonical_position_ids(model: onnx.ModelProto, input_ids: str = "input_ids") -> int:
    """Slice position ids to `Unsqueeze(Shape(input_ids)[1])`, the form EmbedLayerNormalization
    fusion matches; every input shares the sequence axis (dynamic_shapes), so values are equal."""
    index = _Index(model)
    if input_ids not in index.inputs:
        return 0
    slices = []
    for node in index.graph.node:
        if node.op_type != "Gather" or node.input[0] not in index.initializers:
            continue
        sliced = index.parent(node, 1)
        if sliced is None or sliced.op_type != "Slice" or len(sliced.input) < 3:
            continue
        table = index.initializers.get(sliced.input[0])
        if (
            table is not None
            and len(table.dims) == 2
            and _is_sequence_length(index, sliced.input[2])
        ):
            slices.append(sliced)
    if not slices:
        return 0
    out = f"{_PREFIX}_sequence_length"
    model.graph.initializer.append(numpy_helper.from_array(np.array(1, np.int64), f"{out}_index"))
    model.graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), f"{out}_axes"))
    nodes = [
        helper.make_node("Shape", [input_ids], [f"{out}_shape"], f"{out}_shape"),
        helper.make_node(
            "Gather", [f"{out}_shape", f"{out}_index"], [f"{out}_dim"], f"{out}_gather", axis=0
        ),
        helper.make_node("Unsqueeze", [f"{out}_dim", f"{out}_axes"], [out], f"{out}_unsqueeze"),
    ]
    for sliced in slices:  # before _add_nodes, which copies the graph's nodes
        sliced.input[2] = out
    _add_nodes(model, nodes)
    return len(slices)


def prune_dead_nodes(model: onnx.ModelProto) -> int:
    """Remove nodes whose outputs nothing reads (left behind by the rewrites); returns how many."""
    removed = 0
    while True:
        used = {name for node in model.graph.node for name in node.input}
        used |= {out.name for out in model.graph.output}
        dead = [node for node in model.graph.node if not any(out in used for out in node.output)]
        if not dead:
            return removed
        for node in dead:
            model.graph.node.remove(node)
        removed += len(dead)


class _QuantizedQKV:
    """What `expose_qdq_attention` replaced, to quantize the fused Attention again."""

    def __init__(self) -> None:
        self.inputs: dict[str, tuple[str, str]] = {}  # float input -> (scale, zero point) names
        self.outputs: dict[str, tuple[str, str]] = {}  # output projection MatMul -> same
        self.params: dict[str, np.ndarray] = {}  # those scales and zero points, added back later
        self.weights: dict[
            bytes, tuple[np.ndarray, np.ndarray]
        ] = {}  # float bytes -> (int8, scales)


def _dq_weight(index: _Index, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(int8 [in, out], per-output-column scales) of a symmetric int8 weight behind DequantizeLinear."""
    node = index.producer.get(name)
    if node is None or node.op_type != "DequantizeLinear" or len(node.input) < 2:
        return None
    weight, scale = index.constant(node.input[0]), index.constant(node.input[1])
    zero = index.constant(node.input[2]) if len(node.input) > 2 else np.zeros(1, np.int8)
    if (
        weight is None
        or scale is None
        or zero is None
        or weight.dtype != np.int8
        or weight.ndim != 2
    ):
        return None
    axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 1)
    if np.any(zero != 0) or (scale.size > 1 and axis % 2 != 1):
        return None
    return weight, np.broadcast_to(scale.reshape(-1), (weight.shape[1],)).astype(np.float32)


def _activation_qdq(
    index: _Index, dq: onnx.NodeProto
) -> tuple[onnx.NodeProto, np.ndarray, np.ndarray] | None:
    """(QuantizeLinear, scale, uint8 zero point) when `dq` dequantizes a per-tensor quantized activation."""
    q = index.producer.get(dq.input[0]) if dq.op_type == "DequantizeLinear" else None
    if q is None or q.op_type != "QuantizeLinear" or len(q.input) < 3:
        return None
    scale, zero = index.constant(q.input[1]), index.constant(q.input[2])
    if scale is None or zero is None or zero.dtype != np.uint8 or scale.size != 1:
        return None
    return q, scale, zero


def _keep_params(found: _QuantizedQKV, q: onnx.NodeProto, scale, zero) -> tuple[str, str]:
    """Names for copies of a QuantizeLinear's scale and zero point, which go into the graph after
    the optimizer (it drops the node and initializers nothing reads yet)."""
    names = (f"{_PREFIX}_{q.name}_scale", f"{_PREFIX}_{q.name}_zero_point")
    found.params.update({names[0]: scale.reshape(()), names[1]: zero.reshape(())})
    return names


def _is_attention_context(index: _Index, name: str) -> bool:
    """`name` is Reshape(Transpose(MatMul(...))): the heads merged back after attention."""
    path = [index.producer.get(name)]
    for op in ("Reshape", "Transpose", "MatMul"):
        if path[-1] is None or path[-1].op_type != op:
            return False
        path.append(index.parent(path[-1], 0))
    return True


def expose_qdq_attention(model: onnx.ModelProto) -> _QuantizedQKV:
    """QDQ graphs: give the Q, K and V MatMuls of each attention their float input and dequantized
    weights (the same values), and the output projection its float input: the form the attention
    fusion needs. `quantize_attention` then turns the fused Attention into an integer
    `QAttention` with the original scales and puts the projection's Quantize/Dequantize back."""
    index = _Index(model)
    found = _QuantizedQKV()
    for dq in list(index.graph.node):
        activation = _activation_qdq(index, dq)
        users = index.consumers.get(dq.output[0], [])
        if activation is None or not all(
            u.op_type == "MatMul" and u.input[0] == dq.output[0] for u in users
        ):
            continue
        q, scale, zero = activation
        if len(users) == 1 and _is_attention_context(index, q.input[0]):
            found.outputs[users[0].name] = _keep_params(found, q, scale, zero)
            users[0].input[0] = q.input[0]
            continue
        weights = [_dq_weight(index, u.input[1]) for u in users]
        if len(users) != 3 or any(w is None for w in weights):
            continue
        found.inputs[q.input[0]] = _keep_params(found, q, scale, zero)
        for user, (weight, scales) in zip(users, weights, strict=True):
            dequantized = (weight.astype(np.float32) * scales).astype(np.float32)
            name = f"{_PREFIX}_{user.input[1]}_float"
            model.graph.initializer.append(numpy_helper.from_array(dequantized, name))
            found.weights[dequantized.tobytes()] = (weight, scales)
            user.input[0], user.input[1] = q.input[0], name
    return found


def requantize_outputs(model: onnx.ModelProto, found: _QuantizedQKV) -> None:
    """Put back the Quantize/Dequantize pair on each exposed output projection's input."""
    for node in list(model.graph.node):
        if node.name not in found.outputs:
            continue
        scale, zero = found.outputs[node.name]
        source, name = node.input[0], f"{_PREFIX}_{node.name}_input"
        pair = [
            helper.make_node("QuantizeLinear", [source, scale, zero], [f"{name}_q"], f"{name}_q"),
            helper.make_node("DequantizeLinear", [f"{name}_q", scale, zero], [name], f"{name}_dq"),
        ]
        node.input[0] = name
        index = list(model.graph.node).index(node)
        for new in reversed(pair):
            model.graph.node.insert(index, new)


def quantize_attention(model: onnx.ModelProto, found: _QuantizedQKV) -> int:
    """Replace each fused Attention over exposed Q/K/V weights by QAttention (uint8 input quantized
    with the QAT input scale, int8 weights, per-column scales); returns how many."""
    index = _Index(model)
    replaced = 0
    for position, node in enumerate(list(model.graph.node)):
        weight = index.constant(node.input[1]) if node.op_type == "Attention" else None
        if weight is None or node.input[0] not in found.inputs or weight.shape[1] % 3:
            continue
        parts = [found.weights.get(part.tobytes()) for part in np.split(weight, 3, axis=1)]
        if any(part is None for part in parts) or any(
            a.name == "qkv_hidden_sizes" for a in node.attribute
        ):
            continue
        name = f"{_PREFIX}_{node.name}"
        int8 = np.ascontiguousarray(np.concatenate([part[0] for part in parts], axis=1))
        scales = np.concatenate([part[1] for part in parts])
        scales = scales[:1] if np.all(scales == scales[0]) else scales
        for suffix, array in (("w", int8), ("ws", scales), ("wzp", np.zeros(1, np.int8))):
            model.graph.initializer.append(numpy_helper.from_array(array, f"{name}_{suffix}"))
        scale, zero = found.inputs[node.input[0]]
        quantize = helper.make_node(
            "QuantizeLinear", [node.input[0], scale, zero], [f"{name}_x"], f"{name}_q"
        )
        mask = node.input[3] if len(node.input) > 3 else ""
        inputs = [
            f"{name}_x",
            f"{name}_w",
            node.input[2],
            scale,
            f"{name}_ws",
            mask,
            zero,
            f"{name}_wzp",
        ]
        qattention = helper.make_node(
            "QAttention", inputs, list(node.output), name, domain=MS_DOMAIN
        )
        qattention.attribute.extend(node.attribute)
        model.graph.node.remove(model.graph.node[position + replaced])
        model.graph.node.insert(position + replaced, qattention)
        model.graph.node.insert(position + replaced, quantize)
        replaced += 1
    return replaced


def fuse(
    model: onnx.ModelProto, fuse_quantized_attention: bool = False
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The rewrites above, then onnxruntime's BERT optimizer (Python fusions only, opt_level 0,
    so the saved graph holds no hardware-specific kernels); returns the new graph and what changed.

    Heads and hidden size are detected per layer from the graph (`num_heads=0`), so layers with
    different head counts after structured pruning fuse with their own counts. A QDQ graph whose
    attentions do not all become QAttention is fused again without exposing them, so no
    quantized Q/K/V projection is left running in float. `fuse_quantized_attention` turns
    attentions whose matmul inputs QAT quantized into QAttention too (`float_attention_matmuls`).
    """
    graph, rewrites = _rewrite_and_optimize(model, True, fuse_quantized_attention)
    if rewrites.get("exposed_attention", 0) > rewrites.get("quantized_attention", 0):
        logger.info("not every QDQ attention fused; fusing without them")
        graph, rewrites = _rewrite_and_optimize(model, False, fuse_quantized_attention)
    domains = {opset.domain for opset in graph.opset_import}
    if MS_DOMAIN not in domains and any(node.domain == MS_DOMAIN for node in graph.graph.node):
        graph.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return graph, {"rewrites": rewrites, "fused_nodes": fused_counts(graph)}


def _rewrite_and_optimize(
    model: onnx.ModelProto, expose: bool, fuse_quantized_attention: bool
) -> tuple[onnx.ModelProto, dict[str, int]]:
    from onnxruntime.transformers.optimizer import optimize_model

    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    exposed = expose_qdq_attention(rewritten) if expose else _QuantizedQKV()
    rewrites = {
        "attention_masks": canonical_attention_mask(rewritten),
        "head_reshapes": pin_head_counts(rewritten),
        "position_ids": canonical_position_ids(rewritten),
    }
    rewrites["pruned_nodes"] = prune_dead_nodes(rewritten)
    quiet = logging.getLogger("onnxruntime.transformers")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        graph = optimize_model(
            rewritten, model_type="bert", num_heads=0, hidden_size=0, opt_level=0
        ).model
    finally:
        quiet.setLevel(level)
    if fuse_quantized_attention:
        rewrites["float_attention_matmuls"] = float_attention_matmuls(graph)
    rewrites["linear_biases"] = fuse_linear_bias(graph)
    if exposed.inputs:
        rewrites["exposed_attention"] = len(exposed.inputs)
        for name, array in exposed.params.items():
            graph.graph.initializer.append(numpy_helper.from_array(array, name))
        rewrites["quantized_attention"] = quantize_attention(graph, exposed)
        requantize_outputs(graph, exposed)
        prune_dead_nodes(graph)
        used = {name for node in graph.graph.node for name in node.input}
        unused = [init for init in graph.graph.initializer if init.name not in used]
        for init in unused:  # the dequantized float weights the fusion consumed
            graph.graph.initializer.remove(init)
    return graph, rewrites


class _Projection:
    """A quantized Linear feeding the attention: its quantized input and int8 weight, bias."""

    def __init__(self, index: _Index, add: onnx.NodeProto):
        matmul = index.parent(add, 0)
        self.bias = index.constant(add.input[1])
        self.weight = _dq_weight(index, matmul.input[1]) if matmul is not None else None
        dq = index.producer.get(matmul.input[0]) if matmul is not None else None
        self.activation = _activation_qdq(index, dq) if dq is not None else None
        self.input = dq.input[0] if dq is not None else None


def _walk_to_projection(
    index: _Index, name: str, scales: list[float]
) -> tuple[_Projection | None, onnx.NodeProto | None]:
    """From an attention matmul input back through its Quantize/Dequantize, Transpose, head
    Reshape and scaling Mul (its constant appended to `scales`) to the projection's bias Add;
    returns (projection, head Reshape)."""
    reshape = None
    node = index.producer.get(name)
    while node is not None and node.op_type in (
        "QuantizeLinear",
        "DequantizeLinear",
        "Transpose",
        "Reshape",
        "Mul",
    ):
        if node.op_type == "Reshape":
            reshape = node
        if node.op_type == "Mul":
            factor = index.constant(node.input[1])
            if factor is None or factor.size != 1:
                return None, None
            scales.append(float(factor.reshape(-1)[0]))
        node = index.parent(node, 0)
    if node is None or node.op_type != "Add" or reshape is None:
        return None, None
    return _Projection(index, node), reshape


def _is_op(node: onnx.NodeProto | None, op_type: str) -> bool:
    return node is not None and node.op_type == op_type


def _head_size(index: _Index, reshape: onnx.NodeProto) -> int | None:
    """The last entry of a `[batch, seq, heads, head_size]` head Reshape's shape, if constant."""
    shape = index.constant(reshape.input[1])
    if shape is None:
        concat = index.parent(reshape, 1)
        if concat is None or concat.op_type != "Concat" or len(concat.input) != 4:
            return None
        shape = index.constant(concat.input[3])
    return int(shape.reshape(-1)[-1]) if shape is not None and shape.size >= 1 else None


class _QuantizedAttention:
    """One unfused attention of a QDQ graph whose Q.K^T and probs.V inputs are quantized."""

    def __init__(self, index: _Index, softmax: onnx.NodeProto):
        self.ok = False
        add = index.producer.get(softmax.input[0])
        if add is None or add.op_type != "Add" or MASK_INPUT not in index.inputs:
            return
        position = next((i for i in (0, 1) if _is_op(index.parent(add, i), "MatMul")), None)
        if position is None or not _depends_on(index, add.input[1 - position], MASK_INPUT):
            return
        scores = index.parent(add, position)
        self.scales: list[float] = []
        (q, q_shape), (k, _) = (_walk_to_projection(index, n, self.scales) for n in scores.input)
        context = self._context(index, softmax)
        if context is None or q is None or k is None:
            return
        v, _ = _walk_to_projection(index, context.input[1], [])
        self.projections = [q, k, v]
        if v is None or len(self.scales) > 1 or len({p.input for p in self.projections}) != 1:
            return
        if any(
            p.weight is None or p.activation is None or p.bias is None for p in self.projections
        ):
            return
        self.head_size = _head_size(index, q_shape)
        width = q.weight[0].shape[1]
        shapes = {(p.weight[0].shape, p.bias.shape) for p in self.projections}
        if shapes != {(q.weight[0].shape, (width,))}:
            return
        if not self.head_size or width % self.head_size or self.output is None:
            return
        self.heads = width // self.head_size
        self.ok = True

    def _context(self, index: _Index, softmax: onnx.NodeProto) -> onnx.NodeProto | None:
        """probs.V MatMul after Softmax's Quantize/Dequantize; sets `output`, the heads merged."""
        self.output = None
        node = softmax
        for op in ("QuantizeLinear", "DequantizeLinear", "MatMul"):
            users = index.consumers.get(node.output[0], [])
            if len(users) != 1 or users[0].op_type != op:
                return None
            node = users[0]
        merged = node
        for op in ("Transpose", "Reshape"):
            users = index.consumers.get(merged.output[0], [])
            if len(users) != 1 or users[0].op_type != op:
                return None
            merged = users[0]
        self.output = merged.output[0]
        return node


def float_attention_matmuls(model: onnx.ModelProto) -> int:
    """Replace each attention whose Q.K^T and probs.V inputs QAT quantized by onnxruntime's
    QAttention (export option `fuse_quantized_attention`); returns how many.

    QAttention keeps the Q/K/V projections' int8 weights and the QAT scale of their input, but
    computes Q, K, V, the scores, probs and context in float: the rounding of Q, K, probs and V
    to their QAT grids is dropped (an approximation of the trained model the export
    verification bounds). The key-padding mask is `attention_mask` itself (QAttention's raw
    2-D mask), as `canonical_attention_mask` assumes for the float attention.
    """
    from onnxruntime.transformers.onnx_model import OnnxModel

    index = _Index(model)
    found = [_QuantizedAttention(index, n) for n in index.graph.node if n.op_type == "Softmax"]
    found = [attention for attention in found if attention.ok]
    if not found:
        return 0
    mask = f"{_PREFIX}_mask_int32"
    nodes = [helper.make_node("Cast", [MASK_INPUT], [mask], mask, to=TensorProto.INT32)]
    for number, attention in enumerate(found):
        nodes.extend(_qattention(model, attention, mask, f"{_PREFIX}_qattention_{number}"))
    replaced = {attention.output for attention in found}
    for node in model.graph.node:  # the old head merge stops producing the attention output
        node.output[:] = [f"{out}_unused" if out in replaced else out for out in node.output]
    model.graph.node.extend(nodes)
    OnnxModel.graph_topological_sort(model.graph)  # the new nodes after their inputs
    prune_dead_nodes(model)
    used = {name for node in model.graph.node for name in node.input}
    for init in [init for init in model.graph.initializer if init.name not in used]:
        model.graph.initializer.remove(init)  # the float biases and unpacked weights
    return len(found)


def _qattention(
    model: onnx.ModelProto, attention: _QuantizedAttention, mask: str, name: str
) -> list[onnx.NodeProto]:
    """QAttention over the packed int8 Q/K/V weights, their biases and the shared input scale."""
    weights = [p.weight for p in attention.projections]
    int8 = np.ascontiguousarray(np.concatenate([w[0] for w in weights], axis=1))
    scales = np.concatenate([w[1] for w in weights])
    scales = scales[:1] if np.all(scales == scales[0]) else scales
    bias = np.concatenate([p.bias for p in attention.projections]).astype(np.float32)
    _, x_scale, x_zero = attention.projections[0].activation
    arrays = {
        "w": int8,
        "ws": scales.astype(np.float32),
        "wzp": np.zeros(1, np.int8),
        "b": bias,
        "xs": x_scale.reshape(()).astype(np.float32),
        "xzp": x_zero.reshape(()),
    }
    for suffix, array in arrays.items():
        model.graph.initializer.append(numpy_helper.from_array(array, f"{name}_{suffix}"))
    inputs = [attention.projections[0].input] + [f"{name}_{s}" for s in ("w", "b", "xs", "ws")]
    inputs += [mask, f"{name}_xzp", f"{name}_wzp"]
    scale = attention.scales[0] if attention.scales else 1.0
    return [
        helper.make_node(
            "QAttention",
            inputs,
            [attention.output],
            name,
            domain=MS_DOMAIN,
            num_heads=attention.heads,
            scale=float(scale),
        )
    ]


def _integer_linear(index: _Index, matmul: onnx.NodeProto) -> list[str] | None:
    """MatMulIntegerToFloat inputs (A, B, scales, zero points) of `DQ(A) x DQ(int8 weight)`, or
    None: a per-tensor quantized activation times an int8 weight with per-tensor or per-column
    scales, the forms onnxruntime's kernel takes."""
    parts = [index.producer.get(name) for name in matmul.input[:2]]
    if any(p is None or p.op_type != "DequantizeLinear" or len(p.input) < 3 for p in parts):
        return None
    (a, b), weight = parts, index.constant(parts[1].input[0])
    a_scale, b_scale = index.constant(a.input[1]), index.constant(b.input[1])
    if weight is None or weight.dtype != np.int8 or weight.ndim != 2 or a_scale is None:
        return None
    if a.input[0] in index.initializers or a_scale.size != 1 or b_scale is None:
        return None
    axis = next((helper.get_attribute_value(x) for x in b.attribute if x.name == "axis"), 1)
    if b_scale.size != 1 and (axis % 2 != 1 or b_scale.shape != (weight.shape[1],)):
        return None
    return [a.input[0], b.input[0], a.input[1], b.input[1], a.input[2], b.input[2]]


def fuse_linear_bias(model: onnx.ModelProto) -> int:
    """Turn each quantized `MatMul -> Add(bias)` whose bias no fused op took (the Q/K/V
    projections of an unfused attention) into one MatMulIntegerToFloat with the bias: onnxruntime
    makes MatMulIntegerToFloat of the QDQ MatMul but leaves the Add a node of its own. The same
    int8 weights, scales and zero points; returns how many."""
    index = _Index(model)
    nodes: list[onnx.NodeProto | None] = list(index.graph.node)
    position = {out: i for i, node in enumerate(nodes) for out in node.output}
    fused = 0
    for i, add in enumerate(list(nodes)):
        if add is None or add.op_type != "Add":
            continue
        matmul, bias = index.parent(add, 0), index.constant(add.input[1])
        if matmul is None or matmul.op_type != "MatMul" or bias is None or bias.ndim != 1:
            continue
        inputs = _integer_linear(index, matmul)
        if inputs is None or len(index.consumers.get(matmul.output[0], [])) != 1:
            continue
        if bias.dtype != np.float32 or bias.shape[0] != index.constant(inputs[1]).shape[1]:
            continue
        nodes[i] = helper.make_node(
            "MatMulIntegerToFloat",
            [*inputs, add.input[1]],
            list(add.output),
            f"{_PREFIX}_{matmul.name}_bias",
            domain=MS_DOMAIN,
        )
        nodes[position[matmul.output[0]]] = None
        fused += 1
    if fused:
        kept = [node for node in nodes if node is not None]
        del model.graph.node[:]
        model.graph.node.extend(kept)
        prune_dead_nodes(model)
    return fused


def fused_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each fused op type the graph holds."""
    types = [node.op_type for node in model.graph.node]
    return {op: types.count(op) for op in FUSED_OPS if op in types}


def apply_to_export(
    path: Path,
    model: torch.nn.Module,
    batches: Sequence[Mapping[str, torch.Tensor]],
    output_names: Sequence[str],
    fuse_quantized_attention: bool = False,
) -> dict[str, Any]:
    """Replace the ONNX file at `path` by its fused graph if onnxruntime still matches PyTorch.

    Returns the report entry: whether the fused graph was kept, the rewrites, the fused node
    counts and, when it was not kept, why. The caller verifies the file finally written as usual.
    With `fuse_quantized_attention`, a graph whose float attention misses the tolerance is fused
    again without it (the report says why under `fuse_quantized_attention`).
    """
    from sparseforge.export import verify

    original = onnx.load(str(path))
    quantized = verify.is_quantized_graph(original)
    entry = _fuse_and_check(path, model, batches, output_names, quantized, fuse_quantized_attention)
    if fuse_quantized_attention and not entry["applied"]:
        logger.warning("%s with fuse_quantized_attention; fusing without it", entry["reason"])
        refused = entry["reason"]
        entry = _fuse_and_check(path, model, batches, output_names, quantized, False)
        entry["fuse_quantized_attention"] = f"not applied: {refused}"
    return entry


def _fuse_and_check(
    path: Path,
    model: torch.nn.Module,
    batches: Sequence[Mapping[str, torch.Tensor]],
    output_names: Sequence[str],
    quantized: bool,
    fuse_quantized_attention: bool,
) -> dict[str, Any]:
    """One attempt of `apply_to_export`: fuse, verify the candidate, move it over `path` if kept."""
    try:
        fused, report = fuse(
            onnx.load(str(path)), fuse_quantized_attention=fuse_quantized_attention
        )
    except Exception as err:  # the optimizer's pattern code raises many types
        logger.warning("onnxruntime fusion failed (%s); keeping the unfused graph", err)
        return {"applied": False, "reason": f"optimizer failed: {type(err).__name__}: {err}"}
    if not report["fused_nodes"]:
        return {"applied": False, "reason": "no fusion matched", **report}
    candidate_dir = path.parent / f".{_PREFIX}"
    candidate_dir.mkdir()
    try:  # in its own folder: a large graph's external data must not overwrite the original's
        candidate = candidate_dir / path.name
        save_model(fused, candidate)
        reason = _check(candidate, model, batches, output_names, quantized)
        if reason is not None:
            logger.warning("%s; keeping the unfused graph", reason)
            return {"applied": False, "reason": reason, **report}
        for produced in candidate_dir.iterdir():
            os.replace(produced, path.parent / produced.name)
    finally:
        shutil.rmtree(candidate_dir, ignore_errors=True)
    logger.info("onnxruntime fusions applied: %s", report["fused_nodes"])
    return {"applied": True, **report}


def _check(
    path: Path,
    model: torch.nn.Module,
    batches: Sequence[Mapping[str, torch.Tensor]],
    output_names: Sequence[str],
    quantized: bool,
) -> str | None:
    """Why the fused graph at `path` may not replace the export (None: it matches PyTorch)."""
    from sparseforge.export import verify

    try:
        diff = verify.compare(verify.create_session(path), model, batches, output_names)
    except Exception as err:  # onnxruntime refuses a graph with many error types
        return f"onnxruntime cannot run the fused graph: {type(err).__name__}: {str(err)[:300]}"
    ok, _ = verify.tolerance_check(diff, quantized)
    if not ok:
        return f"fused graph max |diff| {diff['max_abs_diff']:.3g} beyond tolerance"
    return None
