"""Check an exported ONNX model against the PyTorch model it came from, and describe the file.

The comparison runs onnxruntime with all graph optimizations (what a deployment runs: QDQ pairs
fused into integer kernels), on the same inputs given to the PyTorch model.

Tolerances (see docs/quantization_export.md):
- FP32 graphs: |ORT - torch| <= 1e-4 * max(1, max |torch output|). Both compute the same float
  math; only reassociation (fused kernels, different GEMM blocking) differs, an error of a few
  float32 ulps per op that grows with depth, far below 1e-4 of the output scale.
- QDQ / integer graphs: max |ORT - torch| <= 0.1 * max(1, max |torch output|) and mean
  <= 0.02 * max(1, ...). Fake quantization and onnxruntime's integer kernels use the same
  scales and zero points, but ORT requantizes through int32 accumulators and its own rounding
  of the output scale, so a value on a rounding boundary can move one quantization step, and
  such flips propagate through later layers. A wrong scale, zero point or missing quantizer
  moves outputs by a large fraction of their range, which these bounds still catch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

FP32_TOLERANCE = 1e-4
QDQ_MAX_TOLERANCE = 0.1
QDQ_MEAN_TOLERANCE = 0.02
QUANT_OPS = {
    "QuantizeLinear",
    "DequantizeLinear",
    "MatMulInteger",
    "QLinearMatMul",
    "ConvInteger",
    "QLinearConv",
}


def create_session(path: Path, optimized_path: Path | None = None) -> Any:
    """An onnxruntime CPU session with all graph optimizations (optionally saving the optimized graph)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def torch_outputs(
    model: torch.nn.Module, inputs: Mapping[str, torch.Tensor], output_names: Sequence[str]
) -> list[np.ndarray]:
    with torch.no_grad():
        outputs = model(**inputs, return_dict=True)
    return [outputs[name].detach().float().cpu().numpy() for name in output_names]


def compare(
    session: Any,
    model: torch.nn.Module,
    batches: Sequence[Mapping[str, torch.Tensor]],
    output_names: Sequence[str],
) -> dict[str, Any]:
    """Max/mean |ORT - torch| over every batch and output, with the reference output scale."""
    max_diff, total, count, scale = 0.0, 0.0, 0, 0.0
    agree, positions = 0, 0
    shapes = []
    for batch in batches:
        expected = torch_outputs(model, batch, output_names)
        got = session.run(
            list(output_names), {name: tensor.cpu().numpy() for name, tensor in batch.items()}
        )
        for ref, out in zip(expected, got, strict=True):
            diff = np.abs(ref - out)
            max_diff = max(max_diff, float(diff.max()))
            total += float(diff.sum())
            count += diff.size
            scale = max(scale, float(np.abs(ref).max()))
            agree += int((ref.argmax(-1) == out.argmax(-1)).sum())
            positions += ref.argmax(-1).size
        shapes.append(list(batch["input_ids"].shape))
    return {
        "max_abs_diff": max_diff,
        "mean_abs_diff": total / max(count, 1),
        "max_abs_output": scale,
        "argmax_agreement": agree / max(positions, 1),
        "input_shapes": shapes,
    }


def is_quantized_graph(model: onnx.ModelProto) -> bool:
    return any(node.op_type in QUANT_OPS for node in model.graph.node)


def tolerance_check(diff: Mapping[str, float], quantized: bool) -> tuple[bool, dict[str, float]]:
    """Whether `diff` is within the documented tolerance; returns (ok, the bounds used)."""
    unit = max(1.0, diff["max_abs_output"])
    if quantized:
        bounds = {
            "max_abs_diff": QDQ_MAX_TOLERANCE * unit,
            "mean_abs_diff": QDQ_MEAN_TOLERANCE * unit,
        }
    else:
        bounds = {"max_abs_diff": FP32_TOLERANCE * unit, "mean_abs_diff": FP32_TOLERANCE * unit}
    ok = all(diff[key] <= bound for key, bound in bounds.items())
    return ok, bounds


def node_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))


def weight_sparsity(model: onnx.ModelProto) -> dict[str, dict[str, Any]]:
    """Fraction of zeros of every weight matrix (rank >= 2) stored in the file.

    An integer weight's zero is its DequantizeLinear zero point (0 for symmetric int8).
    """
    zero_points: dict[str, np.ndarray] = {}
    initializers = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if (
            node.op_type == "DequantizeLinear"
            and len(node.input) > 2
            and node.input[2] in initializers
        ):
            zero_points[node.input[0]] = numpy_helper.to_array(initializers[node.input[2]])
    report = {}
    for name, init in initializers.items():
        if len(init.dims) < 2:
            continue
        array = numpy_helper.to_array(init)
        zero = zero_points.get(name)
        if zero is not None and zero.size > 1:
            shape = [1] * array.ndim
            shape[0 if zero.size == array.shape[0] else -1] = -1
            zero = zero.reshape(shape)
        zeros = int((array == (zero if zero is not None else 0)).sum())
        report[name] = {
            "shape": list(array.shape),
            "dtype": str(array.dtype),
            "sparsity": round(zeros / array.size, 6),
        }
    return report


def file_size(path: Path) -> int:
    """Bytes of the ONNX file plus its external data file(s) in the same folder."""
    size = path.stat().st_size
    data = path.with_name("model.data")
    return size + (data.stat().st_size if data.is_file() else 0)
