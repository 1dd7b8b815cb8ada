"""ONNX export: FP32 or QDQ int8 graphs, verified against PyTorch, in a deployment folder.

    from sparseforge.export import to_onnx
    to_onnx("out/model", task="text-classification", sequence_length=128)

Command line: `sparseforge export onnx --model_path DIR --task TASK [...]`. The model folder is
loaded through `sparseforge.checkpoint`; this package never imports `sparseforge.transformers`.
"""

from sparseforge.export.deployment import to_onnx
from sparseforge.export.onnx_export import export_onnx

__all__ = ["export_onnx", "to_onnx"]
