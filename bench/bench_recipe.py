"""Benchmark (issue 2): recipe load+validate time, and per-step overhead of a manager with LR modifiers.

    python bench/bench_recipe.py [--steps 200]

Recipes: the seed recipes in ../shared/seeds when present (they need every modifier family), else
the test fixtures (said in the output). Overhead: the same training loop with and without a
Manager holding only LR modifiers, timed in alternating blocks in one run; reported as a ratio.
"""

from __future__ import annotations

import argparse
import platform
import re
import time
from pathlib import Path

import torch

from sparseforge import Manager, Recipe, RecipeError

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT.parent / "shared" / "seeds"
FIXTURES = ROOT / "tests" / "fixtures" / "recipes"
LR_RECIPE = """
training_modifiers:
  - !EpochRangeModifier {start_epoch: 0, end_epoch: 4}
  - !LearningRateFunctionModifier {start_epoch: 0, end_epoch: 3, lr_func: linear, init_lr: 5e-5, final_lr: 0}
  - !LearningRateFunctionModifier {start_epoch: 3, end_epoch: 4, lr_func: cosine, init_lr: 5e-5, final_lr: 0}
"""


def recipe_sources(path: Path) -> list[tuple[str, str]]:
    """(name, recipe text) pairs: a recipe file itself, or each ```yaml block of a guide."""
    text = path.read_text(encoding="utf-8")
    if "```yaml" in text:
        blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)
        return [(f"{path.name}#yaml{i}", block) for i, block in enumerate(blocks)]
    return [(path.name, text)]


def time_loads(paths: list[Path], repeats: int) -> list[tuple[str, float]]:
    results = []
    for path in paths:
        for name, text in recipe_sources(path):
            try:
                Recipe.load(text)
            except RecipeError as err:
                results.append((name, float("nan")))
                print(f"  {name}: not loadable ({err})")
                continue
            start = time.perf_counter()
            for _ in range(repeats):
                Recipe.load(text)
            results.append((name, (time.perf_counter() - start) / repeats))
    return results


def manager_only_overhead(steps: int = 5000) -> float:
    """Seconds per step spent in the manager itself (schedule + LR updates), no model work."""
    model = torch.nn.Linear(4, 2)
    manager = Manager.from_recipe(LR_RECIPE)
    manager.modify(model, torch.optim.SGD(model.parameters(), lr=0.1), steps_per_epoch=steps // 4)
    start = time.perf_counter()
    for _ in range(steps):
        manager.optimizer_pre_step()
        manager.optimizer_post_step()
    return (time.perf_counter() - start) / steps


def make_model(kind: str):
    if kind == "tiny-linear":
        return torch.nn.Sequential(
            torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)
        ), (torch.randn(4, 16),)
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536
    )
    model = BertForSequenceClassification(config)
    return model, (torch.randint(0, config.vocab_size, (8, 64)),)


def step_overhead(kind: str, steps: int, blocks: int = 4) -> tuple[float, float]:
    """Fastest block's seconds per step (plain, managed) over alternating blocks: the minimum is
    the least disturbed by other processes on a shared machine."""
    torch.manual_seed(0)
    model, inputs = make_model(kind)
    plain_opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    managed_opt = Manager.from_recipe(LR_RECIPE).modify(
        model, torch.optim.AdamW(model.parameters(), lr=5e-5), steps_per_epoch=max(steps // 4, 1)
    )

    def run(optimizer, n):
        start = time.perf_counter()
        for _ in range(n):
            out = model(*inputs)
            loss = (out.logits if hasattr(out, "logits") else out).float().pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return (time.perf_counter() - start) / n

    run(plain_opt, 3)
    plain, managed = [], []
    for _ in range(blocks):
        plain.append(run(plain_opt, steps // blocks))
        managed.append(run(managed_opt, steps // blocks))
    return min(plain), min(managed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    if SEEDS.is_dir():
        paths = sorted(SEEDS.glob("*"))
        print(f"recipes: seeds from {SEEDS}")
    else:
        paths = sorted(FIXTURES.glob("*"))
        print(f"recipes: ../shared/seeds is missing here; using test fixtures {FIXTURES}")
    print("load + validate (mean of repeats):")
    for name, seconds in time_loads(paths, args.repeats):
        print(f"  {name}: {seconds * 1e3:.2f} ms")
    print(f"manager alone (3 LR/epoch modifiers): {manager_only_overhead() * 1e6:.0f} us/step")
    for kind, steps in (("tiny-linear", args.steps * 10), ("minilm-shaped", args.steps)):
        plain, managed = step_overhead(kind, steps)
        print(
            f"{kind}: plain {plain * 1e3:.3f} ms/step, with LR-only manager {managed * 1e3:.3f} ms/step, "
            f"ratio {managed / plain:.3f}, overhead {(managed - plain) * 1e6:.0f} us/step"
        )


if __name__ == "__main__":
    main()
