"""Benchmark (issue 22): speed of structurally compacted models in onnxruntime vs dense FP32.

BERT-base-shaped (12 x 768) and MiniLM-shaped (6 x 384) classifiers, random weights (speed does
not depend on the values), onnxruntime CPU, batch 1 x 128 tokens and batch 32 x 64 tokens.
Variants, each compacted with sparseforge's own compaction (`compact_model`: smaller Linear
layers, fewer layers) and exported with sparseforge's exporter (`export_onnx`):

  BERT-base: dense FP32; half the heads + a quarter of the FFN neurons kept (FP32, INT8 QDQ);
             the same with half the layers (FP32, INT8 QDQ)
  MiniLM:    dense FP32; the shipped structured recipe's shape, half the heads and 24% of the
             neurons kept, about a third of the encoder MACs (FP32, INT8 QDQ)

Kept heads are drawn at random per layer (uneven positions, as training leaves them); INT8 is the
QAT structure of the shipped recipes calibrated on random tokens. Each graph is written as
`sparseforge export onnx` writes it by default (`fused`: eager attention at export, then
onnxruntime's transformer fusions, kept when they verify; see bench_ort_fusion.py) and, for
reference, without the fusions. `fp32 fused + ort dynamic int8` is the fused FP32 graph through
onnxruntime's `quantize_dynamic` (INT8 without QAT: onnxruntime's own best INT8 path, the
"hand-built" ceiling of the issue). Variants are timed round-robin and the median is kept;
figures are ratios to dense FP32 (unfused, the plain export) of the same shape and batch, in one
run.

    python bench/bench_structured.py [--quick] [--json results.json]
    python bench/bench_structured.py --tiny      # a seconds-long smoke test on a tiny shape
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ort_fusion import export_sparseforge, quantize_dynamic  # noqa: E402
from bench_quantization_export import (  # noqa: E402
    log,
    quantize_random,
    random_classifier,
    time_round_robin,
)

SHAPES = {
    "BERT-base (12x768)": dict(layers=12, hidden=768, heads=12, intermediate=3072),
    "MiniLM (6x384)": dict(layers=6, hidden=384, heads=12, intermediate=1536),
}
TINY = {"tiny (2x64)": dict(layers=2, hidden=64, heads=4, intermediate=128)}
# variant -> (fraction of heads kept, of FFN neurons kept, of layers kept), per shape family
VARIANTS = {
    "BERT-base": {
        "heads/2 + ffn/4": (0.5, 0.25, 1.0),
        "heads/2 + ffn/4 + layers/2": (0.5, 0.25, 0.5),
    },
    "MiniLM": {
        "third of MACs (heads/2, ffn 24%)": (0.5, 0.24, 1.0),
        "third of MACs (4 of 6 layers, heads/2, ffn/2)": (0.5, 0.5, 4 / 6),
        "third of MACs (3 of 6 layers, heads/2, ffn 2/3)": (0.5, 2 / 3, 0.5),
        "third of MACs (2 of 6 layers, full width)": (1.0, 1.0, 2 / 6),
    },
    "tiny": {"heads/2 + ffn/4 + layers/2": (0.5, 0.25, 0.5)},
}
BATCHES = ((1, 128), (32, 64))


def compacted(shape: dict, heads: float, neurons: float, layers: float) -> torch.nn.Module:
    """A random classifier of `shape` with the given fractions kept, removed by compact_model."""
    from sparseforge.modifiers.pruning.compaction import compact_model

    model = random_classifier(**shape)
    generator = torch.Generator().manual_seed(3)
    n_heads = max(1, round(shape["heads"] * heads))
    n_neurons = max(1, round(shape["intermediate"] * neurons))
    keep_heads = [
        torch.randperm(shape["heads"], generator=generator)[:n_heads].tolist()
        for _ in range(shape["layers"])
    ]
    keep_neurons = [
        torch.randperm(shape["intermediate"], generator=generator)[:n_neurons]
        for _ in range(shape["layers"])
    ]
    keep_layers = list(range(max(1, round(shape["layers"] * layers))))
    compact_model(model, keep_layers, keep_heads, keep_neurons)
    return model.eval()


def export_variants(folder: Path, label: str, shape: dict) -> dict[str, Path]:
    """Dense FP32 (plain and fused) and, per variant, FP32 / INT8 QDQ fused, FP32 plain and the
    fused FP32 through onnxruntime's dynamic quantization."""
    family = label.split()[0]
    paths = {
        "dense fp32": folder / "dense_fp32.onnx",
        "dense fp32 fused": folder / "dense_fused.onnx",
    }
    log(f"{label}: exporting dense FP32 (plain, fused)")
    export_sparseforge(random_classifier(**shape), paths["dense fp32"], fused=False)
    export_sparseforge(random_classifier(**shape), paths["dense fp32 fused"], fused=True)
    for index, (name, fractions) in enumerate(VARIANTS[family].items()):
        files = {
            f"{name} fp32": folder / f"v{index}_fp32.onnx",
            f"{name} fp32 fused": folder / f"v{index}_fp32_fused.onnx",
            f"{name} int8 qdq fused": folder / f"v{index}_int8_fused.onnx",
            f"{name} fp32 fused + ort dynamic int8": folder / f"v{index}_dyn.onnx",
        }
        log(f"{label}: exporting {name}: FP32 plain and fused, INT8 QDQ fused, dynamic INT8")
        export_sparseforge(compacted(shape, *fractions), files[f"{name} fp32"], fused=False)
        export_sparseforge(compacted(shape, *fractions), files[f"{name} fp32 fused"], fused=True)
        model = compacted(shape, *fractions)
        quantize_random(model, 128)
        export_sparseforge(model, files[f"{name} int8 qdq fused"], fused=True)
        quantize_dynamic(
            files[f"{name} fp32 fused"], files[f"{name} fp32 fused + ort dynamic int8"]
        )
        paths.update(files)
    return paths


def _size(path: Path) -> int:
    """The graph file plus its external data, if the exporter wrote any beside it."""
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def run(shapes: dict[str, dict], workdir: Path, quick: bool) -> list[dict]:
    rows = []
    for label, shape in shapes.items():
        folder = workdir / label.split()[0]
        folder.mkdir(parents=True, exist_ok=True)
        paths = export_variants(folder, label, shape)
        sizes = {name: _size(path) for name, path in paths.items()}
        for batch, seq in BATCHES:
            iterations = 2 if quick or shape["layers"] <= 2 else (6 if "BERT" in label else 12)
            log(f"{label}: timing batch {batch} x {seq} tokens, {iterations} round(s)")
            speeds = time_round_robin(paths, batch, seq, iterations)
            for name, speed in speeds.items():
                rows.append(
                    {
                        "model": label,
                        "batch": batch,
                        "sequence_length": seq,
                        "variant": name,
                        "seq_per_s": speed,
                        "speedup_vs_dense_fp32": speed / speeds["dense fp32"],
                        "size_mb": sizes[name] / 1e6,
                        "size_ratio_vs_dense_fp32": sizes[name] / sizes["dense fp32"],
                    }
                )
                log(
                    f"  {name:<40} {speed:9.2f} seq/s  x{speed / speeds['dense fp32']:.2f}  {sizes[name] / 1e6:7.1f} MB"
                )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer timing rounds")
    parser.add_argument("--tiny", action="store_true", help="smoke test on a tiny shape only")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument(
        "--models",
        nargs="+",
        choices=("BERT-base", "MiniLM"),
        default=None,
        help="only these shapes",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="sparseforge_bench_structured_"))
    try:
        shapes = TINY if args.tiny else SHAPES
        if args.models:
            shapes = {k: v for k, v in shapes.items() if k.split()[0] in args.models}
        results = {"speed": run(shapes, workdir, args.quick or args.tiny)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["total_seconds"] = time.perf_counter() - started
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
