"""`sparseforge export onnx ...`: the command-line face of `sparseforge.export.to_onnx`."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from sparseforge.export.deployment import MAX_OPSET, MIN_OPSET
from sparseforge.export.onnx_export import DEFAULT_OPSET
from sparseforge.tasks import TASK_ALIASES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparseforge export", description="Export a trained model."
    )
    sub = parser.add_subparsers(dest="format", required=True)
    onnx = sub.add_parser(
        "onnx",
        help="export to a verified ONNX deployment folder",
        description="Export a saved model folder (QAT, pruned or dense) to <model_path>/deployment: model.onnx, "
        "config, tokenizer, recipe.yaml and export_report.json. Fails if onnxruntime and PyTorch disagree.",
    )
    _add_model_args(onnx)
    _add_graph_args(onnx)
    _add_verification_args(onnx)
    _add_output_args(onnx)
    return parser


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model", "the model folder and what it is for")
    group.add_argument(
        "--model_path",
        "--model-path",
        required=True,
        help="folder with config.json, weights, tokenizer (and recipe.yaml)",
    )
    group.add_argument(
        "--task", required=True, help=f"task or SparseML alias: {', '.join(sorted(TASK_ALIASES))}"
    )
    group.add_argument(
        "--recipe",
        default=None,
        help="recipe to rebuild the model's structure (default: recipe.yaml beside the weights)",
    )


def _add_graph_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("graph", "the ONNX graph written")
    group.add_argument(
        "--sequence_length",
        "--sequence-length",
        type=int,
        default=384,
        help="sample sequence length (default 384, as SparseML); the graph's axes stay dynamic",
    )
    group.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET} (default {DEFAULT_OPSET})",
    )
    group.add_argument(
        "--int8_ops",
        "--int8-ops",
        action="store_true",
        help="rewrite quantized MatMul/Gemm to MatMulInteger ops (SparseML's form)",
    )
    group.add_argument(
        "--no_ort_fusion",
        "--no-ort-fusion",
        dest="ort_fusion",
        action="store_false",
        help="keep the plain ONNX graph: no onnxruntime transformer fusions (contrib ops, onnxruntime only)",
    )
    group.add_argument(
        "--fuse_quantized_attention",
        "--fuse-quantized-attention",
        action="store_true",
        help="QAT with quantized attention matmuls: run the attention as onnxruntime's QAttention "
        "(faster; Q/K/probs/V computed in float, not on their QAT grids)",
    )


def _add_verification_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "verification", "the samples onnxruntime and PyTorch are compared on"
    )
    group.add_argument(
        "--data_file",
        "--data-file",
        "--dataset",
        default=None,
        help="real text for verification: .tsv/.csv/.json/.jsonl",
    )
    group.add_argument(
        "--text_column",
        "--text-column",
        default=None,
        help="column of --data_file with the text (default: sentence/text/question/...)",
    )
    group.add_argument(
        "--num_samples",
        "--num-samples",
        type=int,
        default=8,
        help="number of verification samples, >= 1 (default 8)",
    )


def _add_output_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output", "where the deployment folder goes")
    group.add_argument(
        "--output_dir",
        "--output-dir",
        default=None,
        help="deployment folder (default <model_path>/deployment)",
    )
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output folder that is not a previous deployment",
    )


def cli_main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    from sparseforge.export.deployment import REPORT_FILE, to_onnx

    target = to_onnx(
        args.model_path,
        args.task,
        sequence_length=args.sequence_length,
        opset=args.opset,
        output_dir=args.output_dir,
        int8_ops=args.int8_ops,
        data_file=args.data_file,
        text_column=args.text_column,
        num_samples=args.num_samples,
        overwrite=args.overwrite,
        recipe=args.recipe,
        optimize=args.ort_fusion,
        fuse_quantized_attention=args.fuse_quantized_attention,
    )
    report = json.loads((target / REPORT_FILE).read_text(encoding="utf-8"))
    check = report["verification"]
    print(
        f"exported {report['precision']} ONNX to {target / 'model.onnx'} ({report['file_size_bytes'] / 1e6:.1f} MB, opset {report['opset']})"
    )
    print(
        f"verified with onnxruntime on {report['samples']['source']}: max |diff| {check['max_abs_diff']:.3g} "
        f"(tolerance {check['tolerance']['max_abs_diff']:.3g}), mean {check['mean_abs_diff']:.3g}, "
        f"argmax agreement {check['argmax_agreement']:.3f}"
    )
    return 0
