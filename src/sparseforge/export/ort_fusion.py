"""onnxruntime's transformer fusions (Attention, EmbedLayerNormalization, SkipLayerNormalization,
BiasGelu) applied to sparseforge's dynamo exports.

onnxruntime's fastest CPU path for BERT-class encoders runs its fused contrib kernels, which its
Python optimizer (`onnxruntime.transformers.optimizer`) makes by matching the subgraphs the
TorchScript exporter emits. torch's dynamo exporter emits the same math in shapes these patterns
miss, so only the normalisation and Gelu fusions applied to a sparseforge export. Three small,
value-preserving rewrites make the patterns match before the optimizer runs:

1. Attention runs the eager implementation while exporting (`fusable_attention`): the SDPA
   decomposition (scaled Q and K, a NaN guard after Softmax) matches no attention pattern.
2. `canonical_attention_mask`: transformers builds the key-padding mask from `attention_mask`
   through index arithmetic (Range, GatherND, And, Where); the score Adds are fed instead the
   classic additive form `(1 - mask[:, None, None, :]) * finfo.min`, the same values, which
   onnxruntime's fusion recognises and turns into the kernel's mask input.
3. `pin_head_counts`: the exporter reshapes Q, K and V to `[batch, sequence, -1, head_size]`;
   the -1 becomes the layer's own head count (read from its Q weight), so the optimizer detects
   the heads per layer. Structurally pruned layers with different head counts fuse too.
4. `canonical_position_ids`: the position-ids Slice takes its end from `Shape(input_ids)[1]`
   (the exporter picks any input with the sequence axis), the form EmbedLayerNormalization
   fusion looks for.

The fused graph uses onnxruntime contrib ops (domain com.microsoft): it runs in onnxruntime
only, so the step can be turned off (`optimize=False`, `--no_ort_fusion`). It is kept only when
onnxruntime's outputs still match PyTorch's within the export tolerance.

QDQ graphs: Attention fusion needs float Q/K/V weights and does not fuse where the weights are
int8 behind DequantizeLinear; the normalisation and Gelu fusions do apply.
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
    """Export with eager attention (the form onnxruntime fuses); restores the model's own after."""
    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    switch = current not in (None, "eager") and hasattr(model, "set_attn_implementation")
    if switch:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(current)


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


def fuse(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The rewrites above, then onnxruntime's BERT optimizer (Python fusions only, opt_level 0,
    so the saved graph holds no hardware-specific kernels); returns the new graph and what changed.

    Heads and hidden size are detected per layer from the graph (`num_heads=0`), so layers with
    different head counts after structured pruning fuse with their own counts.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
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
        optimized = optimize_model(
            rewritten, model_type="bert", num_heads=0, hidden_size=0, opt_level=0
        )
    finally:
        quiet.setLevel(level)
    graph = optimized.model
    domains = {opset.domain for opset in graph.opset_import}
    if MS_DOMAIN not in domains and any(node.domain == MS_DOMAIN for node in graph.graph.node):
        graph.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return graph, {"rewrites": rewrites, "fused_nodes": fused_counts(graph)}


def fused_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each fused op type the graph holds."""
    types = [node.op_type for node in model.graph.node]
    return {op: types.count(op) for op in FUSED_OPS if op in types}


def apply_to_export(
    path: Path,
    model: torch.nn.Module,
    batches: Sequence[Mapping[str, torch.Tensor]],
    output_names: Sequence[str],
) -> dict[str, Any]:
    """Replace the ONNX file at `path` by its fused graph if onnxruntime still matches PyTorch.

    Returns the report entry: whether the fused graph was kept, the rewrites, the fused node
    counts and, when it was not kept, why. The caller verifies the file finally written as usual.
    """
    from sparseforge.export import verify

    original = onnx.load(str(path))
    quantized = verify.is_quantized_graph(original)
    try:
        fused, report = fuse(original)
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
        diff = verify.compare(verify.create_session(candidate), model, batches, output_names)
        ok, _ = verify.tolerance_check(diff, quantized)
        if not ok:
            logger.warning(
                "fused graph differs from PyTorch (max |diff| %.3g); keeping the unfused graph",
                diff["max_abs_diff"],
            )
            reason = f"fused graph max |diff| {diff['max_abs_diff']:.3g} beyond tolerance"
            return {"applied": False, "reason": reason, **report}
        for produced in candidate_dir.iterdir():
            os.replace(produced, path.parent / produced.name)
    finally:
        shutil.rmtree(candidate_dir, ignore_errors=True)
    logger.info("onnxruntime fusions applied: %s", report["fused_nodes"])
    return {"applied": True, **report}
