"""Benchmark (issue 3): per-step cost of pruning masks, and one OBS pruning step.

    python bench/bench_pruning.py [--batch 2] [--rounds 4] [--obs-layers 1] [--obs-grads 16]

Part 1, on a BERT-base-shaped BertForSequenceClassification (BertConfig defaults, random init,
sequence length 128, AdamW): the same training loop with no recipe, with the seed recipe's
GMPruningModifier ([1,4] blocks on the 72 encoder weight matrices, update_frequency 0.01) and
with ConstantPruningModifier on __ALL_PRUNABLE__ of a 70%-pruned model. Configurations run in
alternating blocks in one process, so the ratios share the machine's noise. GMP runs with
steps_per_epoch 100, so every step of its window is a mask update (update_frequency 0.01 epoch
= 1 step): the worst case. Steps without an update cost what the enforcement costs; both are
reported, plus the amortized ratio for the seed's SQuAD run (~5,500 steps/epoch: an update every
55 steps).

Part 2, one OBS pruning step (fisher_block_size 50) on `--obs-layers` BERT-base encoder layers
(7.08M weights each) with `--obs-grads` gradients (SparseML's default is 1024), run in a child
process; its peak resident memory (VmHWM, reset just before the step) is reported. The Fisher inverse takes d * 50 * 4 bytes
(O(d * B)); time is reported as gradient sampling (forward+backward) and the rest (Woodbury
updates, scoring, masks, OBS weight update), each of which scales linearly in num_grads and d.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

SEED_PARAMS = [
    "re:bert.encoder.layer.*.attention.self.query.weight",
    "re:bert.encoder.layer.*.attention.self.key.weight",
    "re:bert.encoder.layer.*.attention.self.value.weight",
    "re:bert.encoder.layer.*.attention.output.dense.weight",
    "re:bert.encoder.layer.*.intermediate.dense.weight",
    "re:bert.encoder.layer.*.output.dense.weight",
]
GMP = {
    "GMPruningModifier": {
        "params": SEED_PARAMS,
        "init_sparsity": 0.0,
        "final_sparsity": 0.7,
        "start_epoch": 0.0,
        "end_epoch": 20.0,
        "update_frequency": 0.01,
        "inter_func": "cubic",
        "leave_enabled": True,
        "mask_type": [1, 4],
    }
}
CONSTANT = {"ConstantPruningModifier": {"params": "__ALL_PRUNABLE__"}}
SEQ = 128


def recipe_text(spec: dict) -> str:
    name, fields = next(iter(spec.items()))
    return "pruning_modifiers:\n  - !" + name + " " + json.dumps(fields) + "\n"


def bert_base(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig()).train()


def batch(size: int, step: int):
    gen = torch.Generator().manual_seed(step)
    return torch.randint(1000, 30000, (size, SEQ), generator=gen), torch.randint(
        0, 2, (size,), generator=gen
    )


def step_once(model, optimizer, size: int, step: int) -> float:
    ids, labels = batch(size, step)
    start = time.perf_counter()
    model(input_ids=ids, labels=labels).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return time.perf_counter() - start


def per_step(args) -> dict:
    from sparseforge import Manager
    from sparseforge.modifiers.pruning import create_masks

    configs = {}
    for name in ("none", "gmp", "constant"):
        model = bert_base()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        manager = None
        if name == "constant":
            with torch.no_grad():  # a 70%-pruned model, as a sparse-transfer starting point
                for pname, param in model.named_parameters():
                    if param.dim() == 2 and "encoder" in pname:
                        param.mul_(create_masks({"w": param.abs()}, {"w": 0.7})["w"])
        if name != "none":
            manager = Manager(recipe_text(GMP if name == "gmp" else CONSTANT))
            optimizer = manager.modify(model, optimizer, steps_per_epoch=100)
        configs[name] = (model, optimizer, manager)

    times: dict[str, list[float]] = {name: [] for name in configs}
    step = 0
    for model, optimizer, _ in configs.values():  # warm-up (and GMP/Constant's start update)
        step_once(model, optimizer, args.batch, step)
    step += 1
    for _ in range(args.rounds):
        for name, (model, optimizer, _) in configs.items():
            for _ in range(args.steps_per_block):
                times[name].append(step_once(model, optimizer, args.batch, step))
                step += 1
    # GMP's enforcement alone: the same model after its pruning window (masks held, no updates)
    gmp_model, gmp_opt, gmp_manager = configs["gmp"]
    gmp_manager.state.step = 20 * 100 + 1  # past end_epoch: masks enforced, no mask updates
    step_once(gmp_model, gmp_opt, args.batch, step)
    enforce, base2 = [], []
    none_model, none_opt, _ = configs["none"]
    for _ in range(args.rounds):
        for _ in range(args.steps_per_block):
            enforce.append(step_once(gmp_model, gmp_opt, args.batch, step))
            base2.append(step_once(none_model, none_opt, args.batch, step))
            step += 1
    med = {name: statistics.median(values) for name, values in times.items()}
    enforce_med, base2_med = statistics.median(enforce), statistics.median(base2)
    update_cost = med["gmp"] - med["none"]
    enforce_cost = enforce_med - base2_med
    amortized = (base2_med + enforce_cost + update_cost / 55) / base2_med
    return {
        "median_step_s": med,
        "gmp_update_every_step_ratio": med["gmp"] / med["none"],
        "constant_ratio": med["constant"] / med["none"],
        "gmp_enforcement_only_ratio": enforce_med / base2_med,
        "gmp_amortized_ratio_update_every_55_steps": amortized,
        "gmp_final_sparsity": gmp_manager.logs().get("sparsity/total"),
        "steps_measured_per_config": len(times["none"]),
    }


def proc_status_gib(key: str) -> float:
    """A memory figure of this process from /proc/self/status, in GiB (Linux)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 2**20
    raise RuntimeError(f"{key} not in /proc/self/status")


def obs_child(layers: int, grads: int, batch_size: int) -> dict:
    from sparseforge import Manager

    model = bert_base()
    layer_re = "|".join(str(i) for i in range(layers))
    params = [f"re:bert\\.encoder\\.layer\\.({layer_re})\\..*(query|key|value|dense)\\.weight"]
    recipe = {
        "OBSPruningModifier": {
            "params": params,
            "init_sparsity": 0.5,
            "final_sparsity": 0.5,
            "start_epoch": 0.0,
            "end_epoch": 0.0,
            "update_frequency": 1.0,
            "num_grads": grads,
            "damp": 1e-7,
            "fisher_block_size": 50,
            "global_sparsity": True,
        }
    }
    sampling = {"seconds": 0.0}

    def sampler(model, num_batches):
        for i in range(num_batches):
            ids, labels = batch(batch_size, 10_000 + i)
            start = time.perf_counter()
            model(input_ids=ids, labels=labels).loss.backward()
            sampling["seconds"] += time.perf_counter() - start
            yield

    manager = Manager(recipe_text(recipe))
    manager.modify(
        model,
        torch.optim.AdamW(model.parameters(), lr=1e-5),
        steps_per_epoch=1,
        grad_sampler=sampler,
    )
    weights = sum(model.get_parameter(n).numel() for n in manager.modifiers[0].param_names)
    rss_before = proc_status_gib("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:  # reset the peak (VmHWM) to the current RSS
        handle.write("5")
    start = time.perf_counter()
    manager.update()  # the one-shot OBS step
    total = time.perf_counter() - start
    peak = proc_status_gib("VmHWM")
    return {
        "layers": layers,
        "pruned_weights": weights,
        "num_grads": grads,
        "sampler_batch_size": batch_size,
        "total_s": total,
        "sampling_fwd_bwd_s": sampling["seconds"],
        "woodbury_score_update_s": total - sampling["seconds"],
        "fisher_inverse_gib_theory": weights * 50 * 4 / 2**30,
        "rss_gib_before_step": rss_before,
        "peak_rss_gib_during_step": peak,
        "peak_minus_before_gib": peak - rss_before,
        "sparsity_after": manager.logs().get("sparsity/total"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps-per-block", type=int, default=2)
    parser.add_argument("--obs-layers", type=int, default=1)
    parser.add_argument("--obs-grads", type=int, default=16)
    parser.add_argument("--obs-batch", type=int, default=1)
    parser.add_argument("--skip-steps", action="store_true")
    parser.add_argument("--obs-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.obs_child:
        print(json.dumps(obs_child(args.obs_layers, args.obs_grads, args.obs_batch)))
        return

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    if not args.skip_steps:
        print(
            f"per-step: BERT-base, batch {args.batch} x {SEQ} tokens, AdamW, {args.rounds} rounds x {args.steps_per_block} steps per config"
        )
        print(json.dumps(per_step(args), indent=2))
    cmd = [
        sys.executable,
        __file__,
        "--obs-child",
        "--obs-layers",
        str(args.obs_layers),
        "--obs-grads",
        str(args.obs_grads),
        "--obs-batch",
        str(args.obs_batch),
    ]
    out = subprocess.run(
        cmd, check=True, capture_output=True, text=True, env=dict(os.environ)
    ).stdout
    print("OBS step (fisher_block_size 50):")
    print(json.dumps(json.loads(out.strip().splitlines()[-1]), indent=2))


if __name__ == "__main__":
    main()
