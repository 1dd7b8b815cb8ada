"""llm-compressor's `oneshot` on a BERT-class classifier, for bench_oneshot.py's side-by-side rows.

Run by the Python of a separate virtualenv that holds llm-compressor (a benchmark-only tool, never
a sparseforge dependency; this script does not import sparseforge):

    python3.11 -m venv /work/llmc
    /work/llmc/bin/pip install -c bench/llmcompressor-constraints.txt llmcompressor
    /work/llmc/bin/python bench/llmcompressor_oneshot.py --model DENSE_DIR \
        --train train.tsv --dev dev.tsv [--samples 512] [--max_seq_length 64] \
        [--configs sparsegpt50 sparsegpt50_w8a8] [--pipeline independent] [--threads 2]

The constraints file pins torch to the local CPU build (another torch version would bring a
multi-GB CUDA build). Each configuration loads the dense model afresh and runs llm-compressor's
`oneshot` on the first --samples sentences of the `sentence<TAB>label` train tsv (tokenized to at
most --max_seq_length tokens, not shuffled: the same sentences sparseforge calibrates on):

    sparsegpt50        SparseGPTModifier(sparsity 0.5, mask 0:0, block 128, dampening 0.01) on the
                       Linear layers inside the encoder's layer class (BertLayer for BERT/MiniLM:
                       Q, K, V, attention output, intermediate, output; not pooler or classifier)
    sparsegpt50_w8a8   the same, then QuantizationModifier(scheme W8A8) on the same Linears:
                       int8 per-channel weights, dynamic per-token int8 inputs (llm-compressor's
                       preset; sparseforge's PTQ uses static ranges instead)

The encoder layer class is also passed as `sequential_targets`, so llm-compressor's sequential
pipeline cuts the model at each encoder layer. Dev accuracy is measured in PyTorch on the model
`oneshot` returns (fake-quantized where quantized), batches of 128, --max_seq_length tokens.
Prints one JSON line per configuration: {config, accuracy, wall_s, peak_mb, error, versions, and
encoder_linear_sparsity and quantized_linears: what oneshot left in the encoder's Linears}.
wall_s is the `oneshot` call alone; peak_mb is the process's peak RSS after it (its highest point
so far, the earlier configurations included). A configuration llm-compressor refuses gets
accuracy null and its exception, type and message, in `error`; the script carries on. Only the JSON
lines go to stdout (llm-compressor's log goes to stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

CONFIGS = ("sparsegpt50", "sparsegpt50_w8a8")


def read_tsv(path: Path) -> list[tuple[str, int]]:
    """(sentence, label) rows of a tsv whose header is `sentence<TAB>label` (SST-2's layout)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    if header[0] != "sentence":
        raise SystemExit(f"{path}: the first column must be 'sentence', got header {header}")
    rows = []
    for line in lines[1:]:
        if line.strip():
            text, label = line.rsplit("\t", 1)
            rows.append((text, int(label)))
    return rows


def layer_class(model) -> str:
    """The class name of the encoder's repeated layer (BertLayer for BERT and MiniLM)."""
    import torch

    counts: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0:
            name = type(module[0]).__name__
            counts[name] = counts.get(name, 0) + len(module)
    if not counts:
        raise SystemExit("no ModuleList of layers found in the model")
    return max(counts, key=counts.get)


def recipe(config: str, layer: str) -> list:
    """llm-compressor modifiers for `config`, on the Linears inside each `layer`."""
    from llmcompressor.modifiers.pruning import SparseGPTModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier

    sparse = SparseGPTModifier(
        sparsity=0.5, mask_structure="0:0", block_size=128, dampening_frac=0.01, targets=[layer]
    )
    if config == "sparsegpt50":
        return [sparse]
    # Quantize the Linears of the encoder layers only (pooler and classifier stay float).
    return [
        sparse,
        QuantizationModifier(
            targets=["Linear"], scheme="W8A8", ignore=["re:.*pooler.*", "re:.*classifier.*"]
        ),
    ]


def calibration_dataset(tokenizer, rows: list[tuple[str, int]], samples: int, length: int):
    """The first `samples` sentences, tokenized (no padding, no labels), as a datasets.Dataset."""
    from datasets import Dataset

    texts = [text for text, _ in rows[:samples]]
    encoded = tokenizer(texts, truncation=True, max_length=length)
    return Dataset.from_dict(dict(encoded))


def dev_accuracy(model, tokenizer, rows: list[tuple[str, int]], length: int) -> float:
    import torch

    correct = 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), 128):
            chunk = rows[start : start + 128]
            encoded = tokenizer(
                [text for text, _ in chunk],
                padding=True,
                truncation=True,
                max_length=length,
                return_tensors="pt",
            )
            predicted = model(**encoded).logits.argmax(-1)
            correct += int((predicted == torch.tensor([label for _, label in chunk])).sum())
    return correct / len(rows)


def check_result(model, layer: str) -> dict:
    """What oneshot left: the zero fraction of the encoder Linears, how many are quantized."""
    import torch

    zeros = total = quantized = 0
    for module in model.modules():
        if type(module).__name__ != layer:
            continue
        for linear in module.modules():
            if isinstance(linear, torch.nn.Linear):
                zeros += int((linear.weight == 0).sum())
                total += linear.weight.numel()
                quantized += getattr(linear, "quantization_scheme", None) is not None
    return {
        "encoder_linear_sparsity": round(zeros / max(total, 1), 4),
        "quantized_linears": quantized,
    }


def peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run(config: str, args: argparse.Namespace, train, dev) -> dict:
    from llmcompressor import oneshot
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    row = {"config": f"llmc_{config}", "accuracy": None, "wall_s": None, "peak_mb": None}
    row["error"] = None
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForSequenceClassification.from_pretrained(args.model).eval()
        layer = layer_class(model)
        data = calibration_dataset(tokenizer, train, args.samples, args.max_seq_length)
        began = time.perf_counter()
        model = oneshot(
            model=model,
            tokenizer=tokenizer,
            recipe=recipe(config, layer),
            dataset=data,
            num_calibration_samples=min(args.samples, len(data)),
            shuffle_calibration_samples=False,
            max_seq_length=args.max_seq_length,
            sequential_targets=[layer],
            pipeline=args.pipeline,
        )
        row["wall_s"] = round(time.perf_counter() - began, 2)
        row["peak_mb"] = peak_mb()
        row["sequential_targets"] = layer
        row.update(check_result(model, layer))
        row["accuracy"] = dev_accuracy(model, tokenizer, dev, args.max_seq_length)
    except Exception as exc:  # report what llm-compressor refused, then go on
        row["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        traceback.print_exc(file=sys.stderr)
    return row


def versions() -> dict:
    from importlib.metadata import version

    names = ("llmcompressor", "compressed-tensors", "transformers", "torch")
    return {name: version(name) for name in names}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", required=True, help="Hugging Face sequence-classification folder"
    )
    parser.add_argument(
        "--train", required=True, type=Path, help="calibration tsv (sentence, label)"
    )
    parser.add_argument("--dev", required=True, type=Path, help="dev tsv (sentence, label)")
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--max_seq_length", type=int, default=64)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument(
        "--pipeline", default="independent", help="llm-compressor calibration pipeline"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    # llm-compressor logs (loguru) to stdout: keep stdout for the JSON lines, send the rest to stderr.
    results = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    import torch

    torch.set_num_threads(args.threads)
    train, dev = read_tsv(args.train), read_tsv(args.dev)
    found = versions()
    for config in args.configs:
        row = run(config, args, train, dev)
        row["versions"] = found
        print(json.dumps(row), file=results, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
