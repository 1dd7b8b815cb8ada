"""One-shot compression: a trained model + a recipe + a few hundred unlabeled samples, no training.

    result = sparseforge.oneshot(model="./dense", recipe="recipe.yaml", dataset="train.csv",
                                 text_column="sentence", output_dir="./oneshot")

The recipe's modifiers run in recipe order:

- calibrated pruners (`SparseGPTModifier`, `WandaPruningModifier`) run *layer by layer*: the
  inputs of the first repeated block (the largest `nn.ModuleList` of same-class blocks: BERT's
  `encoder.layer`, a decoder's `layers`) are captured once; then for each block the inputs of its
  target Linear modules are accumulated into H = X X^T, the modules are pruned, and the block is
  re-run on the cached inputs to give the next block's inputs. Only one block's activations are
  held at a time, and each block is pruned against the inputs the already-pruned blocks produce;
- pruning modifiers with `start_epoch == end_epoch` (GMP / magnitude, OBS) are applied at once
  through their usual lifecycle; OBS draws its gradients from the calibration samples with labels
  sampled from the model's own predictions (the true Fisher: no labels needed);
- `SmoothQuantModifier` (first in the recipe) rescales smooth-layer outputs and the Linears that
  read them from per-channel activation ranges, keeping only mappings that leave the float
  outputs unchanged;
- `QuantizationModifier` becomes post-training quantization: the same fake-quant modules as QAT,
  int8 weight scales from the weights, static activation ranges (min/max over every calibration
  token) from one pass over the samples, then frozen; it exports to the same QDQ ONNX.

Modifiers that only act during training (learning rate, epochs, distillation) are skipped with a
log line. Everything is validated before any work. This module takes a torch module and tokenized
batches; model folders and text files are read by `sparseforge.transformers.oneshot_cli`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparseforge.checkpoint import folder_written_aside
from sparseforge.errors import DataError, ModelMatchError, RecipeError, SparseforgeError
from sparseforge.modifiers.base import Modifier, TrainingState
from sparseforge.modifiers.pruning.base import GradualPruningModifier
from sparseforge.modifiers.pruning.calibrated import (
    InputHessian,
    LayerwiseModifier,
    find_layers,
    inside,
    is_compressible,
    weight_matrix,
)
from sparseforge.modifiers.quantization import QuantizationModifier, SmoothQuantModifier
from sparseforge.modifiers.quantization.observers import fake_quantizers, set_observers
from sparseforge.recipe import Recipe

logger = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
REPORT_FILE = "oneshot_report.json"
RECIPE_FILE = "recipe.yaml"
TRAINING_RECIPE_FILE = "training_recipe.yaml"
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


@dataclass
class OneShotResult:
    """The compressed model (in place), the report written as oneshot_report.json, the folder."""

    model: nn.Module
    report: dict[str, Any]
    output_dir: Path | None = None
    recipe: Recipe | None = field(default=None, repr=False)
    # the recipe's stages after its one-shot ones, saved as training_recipe.yaml (None: none)
    training_recipe: Recipe | None = field(default=None, repr=False)


# ----- planning: what each modifier does without training ---------------------------------------
def _is_at_once(mod: Modifier) -> bool:
    return isinstance(mod, GradualPruningModifier)


ONE_SHOT_TYPES = (LayerwiseModifier, QuantizationModifier, SmoothQuantModifier)


def _runs_one_shot(mod: Modifier) -> bool:
    if isinstance(mod, ONE_SHOT_TYPES):
        return True
    return _is_at_once(mod) and mod.start_epoch == mod.end_epoch and mod.start_step == mod.end_step


def split_stages(recipe: Recipe) -> tuple[Recipe, Recipe | None]:
    """A staged recipe's leading stages whose modifiers all run one-shot, and the stages after
    them (the training that recovers accuracy), as two recipes; (recipe, None) otherwise."""
    stages = recipe.stages
    count = 0
    while count < len(stages) and all(_runs_one_shot(mod) for mod in stages[count].modifiers):
        count += 1
    if len(stages) < 2 or count in (0, len(stages)):
        return recipe, None
    first = Recipe(stages[:count], recipe.variables, recipe.version, recipe.source)
    return first, Recipe(stages[count:], recipe.variables, recipe.version, recipe.source)


def plan_modifiers(recipe: Recipe) -> list[Modifier]:
    """The recipe's modifiers that act one-shot; RecipeError for a pruner that needs training."""
    planned: list[Modifier] = []
    for mod in recipe.instantiate():
        if isinstance(mod, SmoothQuantModifier) and any(
            isinstance(m, (QuantizationModifier, LayerwiseModifier)) for m in planned
        ):
            raise RecipeError(
                "must come before the pruning and quantization modifiers (it rescales the float "
                "weights and the activation ranges they calibrate on)",
                modifier=mod.name,
            )
        if isinstance(mod, ONE_SHOT_TYPES):
            planned.append(mod)
        elif _is_at_once(mod):
            same = mod.start_epoch == mod.end_epoch and mod.start_step == mod.end_step
            if not same:
                start = mod.start_step if mod.start_step is not None else mod.start_epoch
                end = mod.end_step if mod.end_step is not None else mod.end_epoch
                raise RecipeError(
                    f"prunes gradually from {start} to {end}, which needs training; for one-shot "
                    "pruning set start_epoch equal to end_epoch (e.g. both 0)",
                    modifier=mod.name,
                )
            planned.append(mod)
        else:
            logger.info("oneshot: %s acts only during training; skipped", mod.name)
    if not planned:
        raise RecipeError(
            "the recipe has no modifier that runs one-shot (SparseGPTModifier, WandaPruningModifier, "
            "GPTQModifier, SmoothQuantModifier, QuantizationModifier, or GMP / OBS pruning with "
            "start_epoch == end_epoch)"
        )
    return planned


def needs_calibration_data(modifiers: Sequence[Modifier]) -> list[str]:
    """Names of the modifiers that cannot run without calibration samples (all but magnitude)."""
    return [
        mod.name for mod in modifiers if not (_is_at_once(mod) and not mod.needs_training_batches())
    ]


# ----- calibration batches ------------------------------------------------------------------------
def _row_tensors(row: Mapping[str, Any], max_seq_length: int) -> Batch:
    batch: Batch = {}
    for key in MODEL_INPUT_KEYS:
        if key not in row or row[key] is None:
            continue
        value = torch.as_tensor(row[key])
        if value.dim() == 1:
            value = value.unsqueeze(0)
        batch[key] = value[:, :max_seq_length]
    mask = batch.get("attention_mask")
    if mask is not None and mask.shape[0] == 1:
        length = int(mask.sum())
        if bool(
            mask[0, :length].all()
        ):  # right padding: drop it, pad tokens are not calibration data
            batch = {key: value[:, :length] for key, value in batch.items()}
    return batch


def tokenized_batches(dataset: Any, num_samples: int, max_seq_length: int) -> list[Batch]:
    """Batches (one sample each) from tokenized rows: dicts or a `datasets.Dataset` with input_ids."""
    batches = []
    for row in dataset:
        if len(batches) >= num_samples:
            break
        if not isinstance(row, Mapping) or "input_ids" not in row:
            raise DataError(
                "a tokenized calibration dataset needs an 'input_ids' column in every row"
            )
        batch = _row_tensors(row, max_seq_length)
        if batch["input_ids"].numel():
            batches.append(batch)
    return batches


def is_tokenized(dataset: Any) -> bool:
    """Whether `dataset` already holds token ids (else it is text, or a file to read)."""
    columns = getattr(dataset, "column_names", None)
    if columns is not None:
        return "input_ids" in columns
    if isinstance(dataset, Sequence) and not isinstance(dataset, (str, bytes)) and dataset:
        return isinstance(dataset[0], Mapping) and "input_ids" in dataset[0]
    return False


# ----- layer-by-layer calibration ----------------------------------------------------------------
class _Captured(Exception):
    """Raised by the capture hook to stop the forward pass at the first block."""


def _detached(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple):
        return tuple(_detached(v) for v in value)
    return value


Cached = list[tuple[tuple[Any, ...], dict[str, Any]]]


@torch.no_grad()
def capture_first_inputs(model: nn.Module, first: nn.Module, batches: Sequence[Batch]) -> Cached:
    """The (args, kwargs) the first block receives for each batch; the rest of the model never runs."""
    if first is model:
        return [((), dict(batch)) for batch in batches]
    cached: Cached = []

    def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        cached.append((_detached(args), {k: _detached(v) for k, v in kwargs.items()}))
        raise _Captured

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in batches:
            try:
                model(**batch)
            except _Captured:
                pass
    finally:
        handle.remove()
    if len(cached) != len(batches):
        raise ModelMatchError(
            "oneshot: the model's forward pass did not reach its first repeated block"
        )
    return cached


def _next_inputs(
    output: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    hidden = output[0] if isinstance(output, (tuple, list)) else output
    if args:
        return (hidden.detach(), *args[1:]), kwargs
    if "hidden_states" in kwargs:
        return args, {**kwargs, "hidden_states": hidden.detach()}
    raise ModelMatchError("oneshot: cannot tell which input of a block is its hidden states")


@torch.no_grad()
def collect_hessians(
    layer: nn.Module, modules: Mapping[str, nn.Module], cached: Cached
) -> dict[str, InputHessian]:
    """Run `layer` on every cached input and accumulate H = X X^T of each module's input."""
    hessians = {
        name: InputHessian(weight_matrix(m).shape[1], m.weight.device)
        for name, m in modules.items()
    }
    handles = [
        module.register_forward_hook(lambda _m, inputs, _out, h=hessians[name]: h.add(inputs[0]))
        for name, module in modules.items()
    ]
    try:
        for args, kwargs in cached:
            layer(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return hessians


def _sequential_pass(
    model: nn.Module,
    group: list[LayerwiseModifier],
    batches: Sequence[Batch],
    report: dict[str, Any],
) -> None:
    """Prune every block with `group`, block after block (see module docstring)."""
    from tqdm.auto import tqdm

    prefix, layers = find_layers(model)
    layer_names = [f"{prefix}.{i}" if prefix else "" for i in range(len(layers))]
    selected = [mod.select_targets(model) for mod in group]
    cached = capture_first_inputs(model, layers[0], batches)
    bar = tqdm(list(zip(layer_names, layers, strict=True)), desc="oneshot layers", unit="layer")
    for layer_name, layer in bar:
        began = time.perf_counter()
        for sel, mod in zip(selected, group, strict=True):
            own = {n: m for n, m in sel.items() if inside(n, layer_name)}
            units = [{n: m} for n, m in own.items()] if mod.sequential_update else [own]
            for unit in units:
                for name, hessian in collect_hessians(layer, unit, cached).items():
                    entry = mod.compress(name, unit[name], hessian)
                    report["modules"][name] = {"modifier": mod.name, **entry}
        if layer is not model:
            cached = [_next_inputs(layer(*a, **k), a, k) for a, k in cached]
        seconds = time.perf_counter() - began
        report["layers"].setdefault(layer_name or "model", {})["seconds"] = round(seconds, 3)
        logger.info(
            "oneshot: %s done in %.2fs (peak memory %.0f MB)",
            layer_name or "model",
            seconds,
            peak_memory_mb(),
        )
    del cached


# ----- modifiers applied at once -----------------------------------------------------------------
def sampled_label_grad_sampler(
    batches: Sequence[Batch], seed: int = 0
) -> Callable[..., Iterator[None]]:
    """A `GradSampler` over calibration batches: cross-entropy against labels sampled from the
    model's own softmax (the Fisher's expectation), so OBS needs no labelled data."""

    def sampler(model: nn.Module, num_batches: int, **_: Any) -> Iterator[None]:
        generator = torch.Generator().manual_seed(seed)
        for index in range(num_batches):
            model.zero_grad(set_to_none=True)
            outputs = model(**batches[index % len(batches)])
            loss = 0.0
            for name, logits in _logits_of(outputs):
                flat = logits.reshape(-1, logits.shape[-1])
                probs = torch.softmax(flat.detach().float(), dim=-1)
                labels = torch.multinomial(probs, 1, generator=generator).squeeze(1)
                loss = loss + torch.nn.functional.cross_entropy(flat, labels)
                logger.debug("oneshot grad sampler: %s", name)
            loss.backward()
            yield

    return sampler


def _logits_of(outputs: Any) -> list[tuple[str, torch.Tensor]]:
    items = (
        outputs.items()
        if isinstance(outputs, Mapping)
        else [("logits", outputs[0] if isinstance(outputs, tuple) else outputs)]
    )
    found = [(k, v) for k, v in items if isinstance(v, torch.Tensor) and "logits" in k]
    if not found:
        raise ModelMatchError("OBSPruningModifier one-shot needs a model that returns logits")
    return found


def _apply_at_once(mod: Modifier, state: TrainingState, report: dict[str, Any]) -> None:
    """Run a start == end pruning modifier's lifecycle: start, prune to final, end, finalize."""
    state.step = max(0, math.ceil(max(mod.scheduled_end, 0.0) * state.steps_per_epoch - 1e-9))
    mod.update(state)
    mod.finalize(state)
    for name in getattr(mod, "param_names", []):
        param = state.model.get_parameter(name)
        module_name = name.rsplit(".", 1)[0]
        zeros = float((param == 0).sum()) / max(param.numel(), 1)
        report["modules"][module_name] = {
            "modifier": mod.name,
            "sparsity": zeros,
            "relative_error": None,
        }


# ----- post-training quantization ----------------------------------------------------------------
@torch.no_grad()
def calibrate_quantization(
    mod: QuantizationModifier, model: nn.Module, batches: Sequence[Batch]
) -> int:
    """PTQ with the QAT modules: weight scales from the weights, activation scales from the
    min/max over every calibration token, then frozen. Returns how many quantizers were set."""
    before = set(fake_quantizers(model))
    mod.apply_structure(model)  # the QAT modules, observers frozen
    quantizers = {n: q for n, q in fake_quantizers(model).items() if n not in before}
    modules = dict(model.named_modules())
    ranges: dict[str, list[torch.Tensor]] = {}
    handles = []
    for name, fq in quantizers.items():
        fq.fake_quant_enabled = False  # calibrate on the float model: ranges of its activations
        if name.endswith("weight_fake_quant"):
            fq.observe(modules[name.rsplit(".", 1)[0]].weight)
        else:
            handles.append(fq.register_forward_pre_hook(_range_hook(ranges, name)))
    try:
        for batch in batches:
            model(**batch)
    finally:
        for handle in handles:
            handle.remove()
        for fq in quantizers.values():
            fq.fake_quant_enabled = True
    unobserved = []
    for name, fq in quantizers.items():
        if name.endswith("weight_fake_quant"):
            continue
        if name in ranges:
            fq.observe(torch.stack(ranges[name]))  # a first observation sets min/max exactly
        else:
            unobserved.append(name)
    if unobserved:
        logger.warning(
            "oneshot: %d quantizer(s) saw no calibration data (scale 1): %s",
            len(unobserved),
            ", ".join(unobserved[:4]),
        )
    set_observers(model, False)
    return len(quantizers)


def _range_hook(ranges: dict[str, list[torch.Tensor]], name: str) -> Callable[..., None]:
    def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
        low, high = torch.aminmax(args[0].detach().float())
        if name in ranges:
            low, high = torch.minimum(ranges[name][0], low), torch.maximum(ranges[name][1], high)
        ranges[name] = [low, high]

    return hook


# ----- the run -----------------------------------------------------------------------------------
def peak_memory_mb() -> float:
    """Peak resident memory of this process (ru_maxrss: KB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if os.uname().sysname == "Darwin" else peak / 1024


def prepare(
    model: nn.Module, recipe: Recipe, batches: Sequence[Batch]
) -> tuple[list[Modifier], TrainingState]:
    """Validate everything before any work: the plan, the data, every modifier against the model."""
    planned = plan_modifiers(recipe)
    needing = needs_calibration_data(planned)
    if needing and not batches:
        raise DataError(
            f"{', '.join(needing)} need calibration data: pass dataset= (--dataset FILE with a text "
            "column, or a tokenized dataset) with at least one non-empty sample"
        )
    state = TrainingState(model=model, optimizer=None, steps_per_epoch=1)
    if batches:
        state.grad_sampler = sampled_label_grad_sampler(batches)
    for mod in planned:
        if isinstance(mod, LayerwiseModifier):
            mod.select_targets(model)
        elif isinstance(mod, SmoothQuantModifier):
            mod.check_model(model)
        else:
            mod.initialize(state)
    return planned, state


def run_oneshot(
    model: nn.Module, recipe: Any, batches: Sequence[Batch], recipe_args: Any = None
) -> dict[str, Any]:
    """Apply `recipe` one-shot to `model` in place with tokenized `batches`; returns the report."""
    recipe = Recipe.load(recipe, recipe_args)
    planned, state = prepare(model, recipe, batches)
    began = time.perf_counter()
    was_training, use_cache = model.training, _set_use_cache(model, False)
    model.eval()
    report: dict[str, Any] = {
        "modifiers": [mod.name for mod in planned],
        "calibration_samples": len(batches),
        "calibration_tokens": int(sum(int(b["input_ids"].numel()) for b in batches)),
        "layers": {},
        "modules": {},
    }
    try:
        index = 0
        while index < len(planned):
            mod = planned[index]
            if isinstance(mod, LayerwiseModifier):
                group = [mod]
                while index + 1 < len(planned) and isinstance(
                    planned[index + 1], LayerwiseModifier
                ):
                    index += 1
                    group.append(planned[index])
                _sequential_pass(model, group, batches, report)
            elif isinstance(mod, QuantizationModifier):
                report["quantizers"] = calibrate_quantization(mod, model, batches)
            elif isinstance(mod, SmoothQuantModifier):
                report["smoothquant"] = mod.smooth(model, batches)
            else:
                with torch.enable_grad():
                    _apply_at_once(mod, state, report)
            index += 1
    finally:
        model.train(was_training)
        _set_use_cache(model, use_cache)
    report["layers"] = _layer_sparsity(model, report["layers"])
    report["seconds"] = round(time.perf_counter() - began, 3)
    report["peak_memory_mb"] = round(peak_memory_mb(), 1)
    logger.info(
        "oneshot: %s in %.1fs, peak memory %.0f MB",
        ", ".join(report["modifiers"]),
        report["seconds"],
        report["peak_memory_mb"],
    )
    return report


def _set_use_cache(model: nn.Module, value: Any) -> Any:
    """Decoders must not build a KV cache during calibration; returns the previous setting."""
    config = getattr(model, "config", None)
    previous = getattr(config, "use_cache", None)
    if config is not None and previous is not None:
        config.use_cache = value
    return previous


def _layer_sparsity(model: nn.Module, timings: dict[str, Any]) -> dict[str, Any]:
    prefix, layers = find_layers(model)
    result = {}
    for index, layer in enumerate(layers):
        name = f"{prefix}.{index}" if prefix else "model"
        weights = [weight_matrix(m) for m in layer.modules() if is_compressible(m)]
        total = sum(w.numel() for w in weights)
        zeros = sum(int((w == 0).sum()) for w in weights)
        result[name] = {"sparsity": zeros / total if total else 0.0, **timings.get(name, {})}
    return result


# ----- the public entry point --------------------------------------------------------------------
def _check_output_dir(output_dir: str | os.PathLike | None) -> Path | None:
    if output_dir is None:
        return None
    path = Path(output_dir)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise SparseforgeError(
            f"output_dir {path} exists and is not empty; choose a new folder (files are never replaced)"
        )
    return path


def _inputs(
    model: Any, dataset: Any, tokenizer: Any, text_column: str, samples: int, length: int
) -> tuple[nn.Module, Any, list[Batch]]:
    """(module, tokenizer, calibration batches): folders and text go through the HF layer."""
    if (
        not isinstance(dataset, (str, os.PathLike, type(None)))
        and hasattr(dataset, "__len__")
        and len(dataset) == 0
    ):
        raise DataError("the calibration dataset is empty: it holds no sample")
    if isinstance(model, (str, os.PathLike)) or (dataset is not None and not is_tokenized(dataset)):
        from sparseforge.transformers import oneshot_cli

        model, tokenizer = oneshot_cli.resolve_model(model, tokenizer)
        if dataset is None:
            return model, tokenizer, []
        return (
            model,
            tokenizer,
            oneshot_cli.text_batches(dataset, tokenizer, text_column, samples, length),
        )
    batches = tokenized_batches(dataset, samples, length) if dataset is not None else []
    return model, tokenizer, batches


def resolve_stubs(model: Any, recipe: Any) -> tuple[Any, Any]:
    """The public edge: a zoo: stub given as the model or the recipe becomes its local path."""
    from sparseforge.zoo import resolve

    if isinstance(model, str):
        model = resolve(model, "model")
    if isinstance(recipe, str):
        recipe = resolve(recipe, "recipe")
    return model, recipe


def oneshot(
    model: nn.Module | str | os.PathLike,
    recipe: Any,
    dataset: Any = None,
    *,
    text_column: str = "text",
    num_calibration_samples: int = 512,
    max_seq_length: int = 384,
    output_dir: str | os.PathLike | None = None,
    save_compressed: bool = False,
    recipe_args: Any = None,
    tokenizer: Any = None,
) -> OneShotResult:
    """Compress `model` (a module or a model folder) with `recipe` (file, text, modifiers) from
    calibration `dataset` (csv/tsv/json/jsonl file with `text_column`, text rows, or tokenized
    rows), without training; saves a model folder to `output_dir` when given."""
    if num_calibration_samples < 1:
        raise DataError(f"num_calibration_samples must be >= 1, got {num_calibration_samples}")
    if max_seq_length < 1:
        raise DataError(f"max_seq_length must be >= 1, got {max_seq_length}")
    model, recipe = resolve_stubs(model, recipe)
    loaded, training = split_stages(Recipe.load(recipe, recipe_args))
    planned = plan_modifiers(loaded)
    out = _check_output_dir(output_dir)
    if save_compressed and out is None:
        raise SparseforgeError("save_compressed=True needs output_dir (--output_dir)")
    needing = needs_calibration_data(planned)
    if dataset is None and needing:
        raise DataError(
            f"{', '.join(needing)} need calibration data: pass dataset= (--dataset FILE)"
        )
    to_save = loaded
    if isinstance(model, (str, os.PathLike)):
        from sparseforge.transformers.oneshot_cli import recipe_to_save

        to_save = recipe_to_save(model, loaded)
    model, tokenizer, batches = _inputs(
        model, dataset, tokenizer, text_column, num_calibration_samples, max_seq_length
    )
    if dataset is not None and not batches:
        raise DataError("the calibration dataset holds no non-empty sample")
    if save_compressed:
        from sparseforge.transformers.compressed import check_plan

        check_plan(model, planned)
    report = run_oneshot(model, loaded, batches)
    if out is not None:
        save_oneshot(
            model,
            to_save,
            report,
            out,
            tokenizer=tokenizer,
            save_compressed=save_compressed,
            training=training,
        )
    return OneShotResult(
        model=model, report=report, output_dir=out, recipe=loaded, training_recipe=training
    )


def save_oneshot(
    model: nn.Module,
    recipe: Recipe,
    report: dict[str, Any],
    output_dir: Path,
    *,
    tokenizer: Any = None,
    save_compressed: bool = False,
    training: Recipe | None = None,
) -> None:
    """Write the model folder: weights (+ config, tokenizer), recipe.yaml, oneshot_report.json,
    and the recipe's training stages when it has some. Written aside, then renamed: the folder
    exists only once complete (`output_dir` must be absent or empty)."""
    with folder_written_aside(Path(output_dir)) as staging:
        if save_compressed:
            from sparseforge.transformers.compressed import save_compressed_model

            report["compressed"] = save_compressed_model(model, staging)
        elif hasattr(model, "save_pretrained"):
            model.save_pretrained(str(staging))
        else:
            from safetensors.torch import save_model

            save_model(model, str(staging / "model.safetensors"))
        if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(str(staging))
        recipe.save(staging / RECIPE_FILE)
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=2), encoding="utf-8")
        if training is not None:
            training.save(staging / TRAINING_RECIPE_FILE)
    logger.info("oneshot: saved %s", output_dir)
    if training is not None:
        path = Path(output_dir) / TRAINING_RECIPE_FILE
        logger.info(
            "oneshot: the recipe's training stages are in %s; continue with `sparseforge train "
            "TASK --model_name_or_path %s --recipe %s` (and --distill_teacher the dense model)",
            path,
            output_dir,
            path,
        )


__all__ = ["OneShotResult", "find_layers", "oneshot", "run_oneshot", "save_oneshot"]
