"""PyTorch -> ONNX with torch's dynamo exporter, dynamic batch and sequence axes.

Why the dynamo exporter (`torch.onnx.export(..., dynamo=True)`, the default in torch 2.13):
the TorchScript tracer bakes Python branches on sample values into the graph (transformers'
mask code skips the padding mask when a sample has none, silently breaking dynamic shapes), and
is deprecated. torch.export has no kernel for the fake-quant op with tensor scales, so the
FakeQuantize modules emit the opaque `sparseforge::fake_quantize` op while exporting and
`qdq.fake_quantize_onnx` translates it to QuantizeLinear/DequantizeLinear.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import onnx
import torch

from sparseforge.errors import ExportError
from sparseforge.export.qdq import (
    convert_to_integer_ops,
    fold_weight_quantization,
    gather_before_dequantize,
    name_weights,
    translation_table,
)

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 20
# Protobuf cannot hold more than 2 GiB; keep a margin for the graph itself.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
EXTERNAL_DATA_FILE = "model.data"
# The exporter's optimizer logs every rewrite at INFO; the CLI runs at INFO.
_CHATTY_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._export")
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class _TupleOutputs(torch.nn.Module):
    """Returns the task's outputs as a tuple, so ONNX output names are stable."""

    def __init__(self, model: torch.nn.Module, output_names: Sequence[str]):
        super().__init__()
        self.model = model
        self.output_names = list(output_names)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
        }
        outputs = self.model(**{k: v for k, v in inputs.items() if v is not None}, return_dict=True)
        return tuple(outputs[name] for name in self.output_names)


def _refuse_groups(model: torch.nn.Module) -> None:
    """Per-group weight scales (GPTQ `group_size`) have no QDQ translation here yet: say so.

    onnxruntime 1.32 runs opset-21 DequantizeLinear with `block_size`, but this exporter writes
    opset-18 per-tensor/per-channel QDQ and folds weights per channel only.
    """
    from sparseforge.modifiers.quantization.observers import fake_quantizers

    grouped = [name for name, fq in fake_quantizers(model).items() if fq.grouped]
    if grouped:
        raise ExportError(
            f"ONNX export supports per-tensor and per-channel weight scales only; {grouped[0]} "
            f"(and {len(grouped) - 1} more) use group_size (strategy: group). Quantize with "
            "strategy: channel (no group_size) to export, or use --save_compressed for transformers"
        )


def export_onnx(
    model: torch.nn.Module,
    sample_inputs: Mapping[str, torch.Tensor],
    output_names: Sequence[str],
    path: Path,
    *,
    opset: int = DEFAULT_OPSET,
    int8_ops: bool = False,
) -> dict[str, int]:
    """Export `model` to `path` (external data when large); returns counts of the QDQ rewrites."""
    unknown = set(sample_inputs) - set(MODEL_INPUTS)
    if unknown or "input_ids" not in sample_inputs:
        raise ExportError(
            f"model inputs must be input_ids [+ attention_mask, token_type_ids], got {sorted(sample_inputs)}"
        )
    _refuse_groups(model)
    wrapper = _TupleOutputs(model.eval(), output_names)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dynamic_shapes = {name: {0: batch, 1: sequence} for name in sample_inputs}
    quiet = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.WARNING)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapper,
                (),
                None,
                kwargs=dict(sample_inputs),
                input_names=list(sample_inputs),
                output_names=list(output_names),
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                custom_translation_table=translation_table(),
                optimize=True,
                verbose=False,
            )
    except Exception as err:  # the exporter raises many types; report them as one
        raise ExportError(f"torch.onnx.export failed: {_summary(err)}") from err
    finally:
        for log, level in zip(quiet, levels, strict=True):
            log.setLevel(level)
    proto = program.model_proto
    stats = {"folded_weights": fold_weight_quantization(proto)}
    stats["gathered_embeddings"] = gather_before_dequantize(proto)
    arrays = {f"model.{name}": p.detach().cpu().numpy() for name, p in model.named_parameters()}
    stats["renamed_weights"] = name_weights(proto, arrays)
    if int8_ops:
        stats["integer_matmuls"] = convert_to_integer_ops(proto)
    save_model(proto, path)
    return stats


def save_model(proto: onnx.ModelProto, path: Path) -> None:
    """Save `proto` to `path`, moving weights to `model.data` beside it when the file would be too big."""
    size = sum(len(init.raw_data) for init in proto.graph.initializer)
    if size > EXTERNAL_DATA_THRESHOLD:
        logger.info(
            "model weights are %.2f GB: saving them as external data (%s)",
            size / 1e9,
            EXTERNAL_DATA_FILE,
        )
        onnx.save_model(
            proto,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=EXTERNAL_DATA_FILE,
        )
    else:
        onnx.save_model(proto, str(path))


def _summary(err: Exception) -> str:
    """The informative line of an exporter error (its 'Exception summary' when present)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if "## Exception summary" in lines:
        index = lines.index("## Exception summary")
        if index + 1 < len(lines):
            return lines[index + 1][:600]
    return f"{type(err).__name__}: {lines[0][:600] if lines else ''}"
