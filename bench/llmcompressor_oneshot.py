"""llm-compressor's `oneshot` on a BERT-class encoder, for bench_oneshot.py's side-by-side rows.

Run by the Python of a separate virtualenv that holds llm-compressor (a benchmark-only tool, never
a sparseforge dependency; this script does not import sparseforge):

    python3.11 -m venv /work/llmc
    /work/llmc/bin/pip install -c bench/llmcompressor-constraints.txt llmcompressor
    /work/llmc/bin/python bench/llmcompressor_oneshot.py [--task sst2] --model DENSE_DIR \
        --train train.tsv --dev dev.tsv [--samples 512] [--max_seq_length 64] \
        [--configs sparsegpt50 sparsegpt50_w8a8] [--pipeline independent] [--threads 2]
    /work/llmc/bin/python bench/llmcompressor_oneshot.py --task conll --model DENSE_DIR \
        --train eng.train --dev eng.testb --max_seq_length 128 [...]

The constraints file pins torch to the local CPU build (another torch version would bring a
multi-GB CUDA build). Each configuration loads the dense model afresh (AutoModelForSequence-
Classification for sst2, AutoModelForTokenClassification for conll) and runs llm-compressor's
`oneshot` on the first --samples calibration texts, tokenized to at most --max_seq_length tokens,
not shuffled: the same texts sparseforge calibrates on (sst2: the sentences of the
`sentence<TAB>label` train tsv; conll: eng.train's sentences, words joined by single spaces):

    sparsegpt50        SparseGPTModifier(sparsity 0.5, mask 0:0, block 128, dampening 0.01) on the
                       Linear layers inside the encoder's layer class (BertLayer for BERT/MiniLM:
                       Q, K, V, attention output, intermediate, output; not pooler or classifier)
    sparsegpt50_w8a8   the same, then QuantizationModifier(scheme W8A8) on the same Linears:
                       int8 per-channel weights, dynamic per-token int8 inputs (llm-compressor's
                       preset; sparseforge's PTQ uses static ranges instead)

The encoder layer class is also passed as `sequential_targets`, so llm-compressor's sequential
pipeline cuts the model at each encoder layer. The model `oneshot` returns (fake-quantized where
quantized) then predicts every evaluation unit in PyTorch, as bench_oneshot.py does for its own
rows, so that it scores them with the same per-unit statistics and bootstrap draws:

    sst2   `predictions`: the predicted label id of every dev sentence (batches of 128, padded,
           --max_seq_length tokens); `accuracy` against the tsv's labels as well
    conll  `predictions`: the predicted tag of every word of every eng.testb sentence (batches of
           64, words tokenized with is_split_into_words, padded, truncated at --max_seq_length,
           each word tagged from its first sub-token, words cut off by truncation left out: the
           alignment of sparseforge's tokenize_and_align_labels), tag names from id2label

Prints one JSON line per configuration: {config, task, predictions, units, accuracy (sst2),
calibration_sha256 and evaluation_sha256 (of the texts used, so that bench_oneshot can check
they are its own), wall_s, peak_mb, error, versions, and encoder_linear_sparsity and
quantized_linears: what oneshot left in the encoder's Linears}. wall_s is the `oneshot` call
alone; peak_mb is the process's peak RSS after it (its highest point so far, the earlier
configurations included). A configuration llm-compressor refuses gets predictions null and its
exception, type and message, in `error`; the script carries on. Only the JSON lines go to stdout
(llm-compressor's log goes to stderr).
"""

from __future__ import annotations

import argparse
import hashlib
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
DOCSTART = "-DOCSTART-"


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


def read_conll(path: Path) -> list[tuple[list[str], list[str]]]:
    """(words, tags) per sentence of a CoNLL column file: blank and `-DOCSTART-` lines end a
    sentence, the first column is the word, the last the tag (as written: IOB1 in CoNLL-2003;
    only the words are used here, bench_oneshot keeps the gold tags)."""
    sentences: list[tuple[list[str], list[str]]] = []
    words: list[list[str]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if not parts or parts[0] == DOCSTART:
            if words:
                sentences.append(([w[0] for w in words], [w[-1] for w in words]))
            words = []
            continue
        words.append(parts)
    if words:
        sentences.append(([w[0] for w in words], [w[-1] for w in words]))
    if not sentences:
        raise SystemExit(f"{path}: no sentences")
    return sentences


def sha256(texts: list[str]) -> str:
    """The digest bench_oneshot compares with its own: texts joined by newlines, UTF-8."""
    return hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()


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


def calibration_dataset(tokenizer, texts: list[str], length: int):
    """The texts tokenized (no padding, no labels), as a datasets.Dataset."""
    from datasets import Dataset

    encoded = tokenizer(texts, truncation=True, max_length=length)
    return Dataset.from_dict(dict(encoded))


def predict_labels(model, tokenizer, texts: list[str], length: int) -> list[int]:
    """The predicted label id of every text: batches of 128, padded, `length` tokens at most."""
    import torch

    predicted: list[int] = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(texts), 128):
            encoded = tokenizer(
                texts[start : start + 128],
                padding=True,
                truncation=True,
                max_length=length,
                return_tensors="pt",
            )
            predicted.extend(model(**encoded).logits.argmax(-1).tolist())
    return predicted


def first_subtokens(word_ids: list[int | None]) -> list[int]:
    """Positions of each word's first sub-token, in word order; a word cut off by truncation (or
    with no token at all) has none and is left out, as tokenize_and_align_labels leaves it."""
    positions, previous = [], None
    for position, word in enumerate(word_ids):
        if word is not None and word != previous:
            positions.append(position)
        previous = word
    return positions


def predict_tags(model, tokenizer, sentences: list[list[str]], length: int) -> list[list[str]]:
    """The predicted tag of every surviving word of every sentence, read from its first
    sub-token: batches of 64, words tokenized with is_split_into_words, padded, `length` tokens."""
    import torch

    id_to_label = {int(i): label for i, label in model.config.id2label.items()}
    tagged: list[list[str]] = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(sentences), 64):
            encoded = tokenizer(
                sentences[start : start + 64],
                is_split_into_words=True,
                padding=True,
                truncation=True,
                max_length=length,
                return_tensors="pt",
            )
            best = model(**encoded).logits.argmax(-1).tolist()
            for index, row in enumerate(best):
                positions = first_subtokens(encoded.word_ids(batch_index=index))
                tagged.append([id_to_label[row[p]] for p in positions])
    return tagged


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


class Data:
    """The task's calibration texts and evaluation units, read once for every configuration."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.task = args.task
        if args.task == "sst2":
            train, dev = read_tsv(args.train), read_tsv(args.dev)
            self.calibration = [text for text, _ in train[: args.samples]]
            self.units = [text for text, _ in dev]
            self.labels = [label for _, label in dev]
            self.digest_units = self.units
        else:
            train, test = read_conll(args.train), read_conll(args.dev)
            self.calibration = [" ".join(words) for words, _ in train[: args.samples]]
            self.units = [words for words, _ in test]
            self.labels = None
            self.digest_units = [" ".join(words) for words in self.units]

    def evaluate(self, model, tokenizer, length: int) -> dict:
        """predictions (and accuracy for sst2) of `model` on every evaluation unit."""
        if self.task == "conll":
            return {"predictions": predict_tags(model, tokenizer, self.units, length)}
        predicted = predict_labels(model, tokenizer, self.units, length)
        correct = sum(p == t for p, t in zip(predicted, self.labels, strict=True))
        return {"predictions": predicted, "accuracy": correct / len(self.labels)}


def run(config: str, args: argparse.Namespace, data: Data) -> dict:
    import transformers
    from llmcompressor import oneshot

    row = {"config": f"llmc_{config}", "task": data.task, "predictions": None}
    row.update(units=len(data.units), wall_s=None, peak_mb=None, error=None)
    row["calibration_sha256"] = sha256(data.calibration)
    row["evaluation_sha256"] = sha256(data.digest_units)
    head = {
        "sst2": transformers.AutoModelForSequenceClassification,
        "conll": transformers.AutoModelForTokenClassification,
    }[data.task]
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
        model = head.from_pretrained(args.model).eval()
        layer = layer_class(model)
        calibration = calibration_dataset(tokenizer, data.calibration, args.max_seq_length)
        began = time.perf_counter()
        model = oneshot(
            model=model,
            tokenizer=tokenizer,
            recipe=recipe(config, layer),
            dataset=calibration,
            num_calibration_samples=len(calibration),
            shuffle_calibration_samples=False,
            max_seq_length=args.max_seq_length,
            sequential_targets=[layer],
            pipeline=args.pipeline,
        )
        row["wall_s"] = round(time.perf_counter() - began, 2)
        row["peak_mb"] = peak_mb()
        row["sequential_targets"] = layer
        row.update(check_result(model, layer))
        row.update(data.evaluate(model, tokenizer, args.max_seq_length))
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
    parser.add_argument("--task", choices=["sst2", "conll"], default="sst2")
    parser.add_argument(
        "--model", required=True, help="Hugging Face classification folder of the --task"
    )
    parser.add_argument(
        "--train", required=True, type=Path, help="calibration file: sst2 tsv or eng.train"
    )
    parser.add_argument(
        "--dev", required=True, type=Path, help="evaluation file: sst2 dev tsv or eng.testb"
    )
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
    data = Data(args)
    found = versions()
    for config in args.configs:
        row = run(config, args, data)
        row["versions"] = found
        print(json.dumps(row), file=results, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
