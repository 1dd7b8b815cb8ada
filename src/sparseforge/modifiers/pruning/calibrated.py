"""Calibrated one-shot pruning: the shared part of SparseGPT and Wanda.

These modifiers prune a trained model without training, from the inputs their Linear layers see
on a few hundred calibration samples. `sparseforge.oneshot` drives them layer by layer: for each
repeated block (a BERT layer, a decoder layer) it hooks the inputs of the block's target modules,
accumulates `H = sum x x^T` per module (`InputHessian`), and calls `compress(name, module, H)`.
A pruner only turns a weight and its H into a pruned weight (`prune_matrix`); GPTQ (in
`modifiers/quantization/gptq.py`) shares the rest. Only Linear modules inside the repeated blocks
are selected (`find_layers`); the embeddings and heads outside them stay as they are.

`targets` / `ignore` entries are module class names (`Linear`), module names or `re:` patterns
(a block's name selects every Linear inside it; `__ALL__` selects every Linear). transformers'
GPT-2 `Conv1D` (weights stored input-major) is pruned as the Linear it is.
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar

import torch
from pydantic import field_validator, model_validator

from sparseforge.errors import ModelMatchError, RecipeError
from sparseforge.modifiers.base import Modifier, TrainingState
from sparseforge.modifiers.pruning.masks import NM_TOLERANCE, MaskStructure, parse_mask_type
from sparseforge.modifiers.selection import ALL, as_pattern_list, name_matches

logger = logging.getLogger(__name__)
# transformers' GPT-2 layer, matched by name: modifiers do not import transformers
_CONV1D = "Conv1D"


def is_compressible(module: torch.nn.Module) -> bool:
    """A Linear (or GPT-2 Conv1D) whose 2-D weight the one-shot pruners can rewrite."""
    weight = getattr(module, "weight", None)
    kind = isinstance(module, torch.nn.Linear) or type(module).__name__ == _CONV1D
    return kind and isinstance(weight, torch.Tensor) and weight.dim() == 2


def weight_matrix(module: torch.nn.Module) -> torch.Tensor:
    """The weight as (out_features, in_features), whatever the module stores."""
    weight = module.weight.detach()
    return weight.t() if type(module).__name__ == _CONV1D else weight


def set_weight_matrix(module: torch.nn.Module, matrix: torch.Tensor) -> None:
    """Write an (out, in) matrix back into the module's own layout and dtype."""
    if type(module).__name__ == _CONV1D:
        matrix = matrix.t()
    module.weight.data.copy_(matrix.to(module.weight.dtype))


def find_layers(model: torch.nn.Module) -> tuple[str, list[torch.nn.Module]]:
    """The model's repeated blocks: its largest `nn.ModuleList` whose entries share one class.

    A model without one is treated as a single block (the model itself, name "").
    """
    best: tuple[int, str, list[torch.nn.Module]] | None = None
    for name, module in model.named_modules():
        if (
            isinstance(module, torch.nn.ModuleList)
            and len(module)
            and len({type(m) for m in module}) == 1
        ):
            size = sum(p.numel() for p in module.parameters())
            if best is None or size > best[0]:
                best = (size, name, list(module))
    if best is None or best[0] == 0:
        return "", [model]
    return best[1], best[2]


def block_names(model: torch.nn.Module) -> list[str]:
    """Names of the repeated blocks ("" when the model is one block)."""
    prefix, layers = find_layers(model)
    return [f"{prefix}.{i}" if prefix else "" for i in range(len(layers))]


def inside(name: str, prefix: str) -> bool:
    return not prefix or name == prefix or name.startswith(prefix + ".")


class InputHessian:
    """`H = sum_t x_t x_t^T` over every input token of one module (float32), and the token count.

    SparseGPT uses H as the Hessian of the layer-wise reconstruction loss (up to a factor 2/n
    that cancels), Wanda its diagonal (the squared input norm per channel), and the report the
    relative reconstruction error tr(D H D^T) / tr(W H W^T) with D the change of the weights.
    """

    def __init__(self, columns: int, device: torch.device | str = "cpu"):
        self.matrix = torch.zeros(columns, columns, dtype=torch.float32, device=device)
        self.tokens = 0

    @torch.no_grad()
    def add(self, inputs: torch.Tensor) -> None:
        x = inputs.detach().reshape(-1, inputs.shape[-1]).float()
        self.matrix.addmm_(x.t(), x)
        self.tokens += x.shape[0]


def relative_error(original: torch.Tensor, changed: torch.Tensor, hessian: torch.Tensor) -> float:
    """||W X - W' X||^2 / ||W X||^2 computed from H = X X^T (0 when W X is 0)."""
    w = original.float()
    delta = w - changed.float()
    denominator = float(torch.einsum("ij,jk,ik->", w, hessian, w))
    numerator = float(torch.einsum("ij,jk,ik->", delta, hessian, delta))
    return numerator / denominator if denominator > 0 else 0.0


def parse_mask_structure(value: Any) -> MaskStructure:
    """llm-compressor's `mask_structure`: "0:0" (unstructured) or "N:M" (N kept of every M)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 60:
        n, m = divmod(value, 60)  # YAML 1.1 reads an unquoted 2:4 as the base-60 integer 124
        raise ValueError(
            f"{value} is how YAML reads an unquoted {n}:{m}; write it quoted: '{n}:{m}'"
        )
    if isinstance(value, str) and value.strip() in ("0:0", "unstructured"):
        return MaskStructure("unstructured")
    structure = parse_mask_type(value)
    if structure.kind == "block":
        raise ValueError(
            f"block structures are not supported here, got {value!r}; use '0:0' or 'N:M' like '2:4'"
        )
    return structure


class LayerwiseModifier(Modifier):
    """Base of the calibrated one-shot modifiers: which modules, and one `compress` per module."""

    # runs only under `sparseforge oneshot`, which reads this flag
    one_shot: ClassVar[bool] = True

    targets: str | list[str] = ALL
    ignore: list[str] = []
    sequential_update: bool = False

    @model_validator(mode="after")
    def _check_targets(self) -> LayerwiseModifier:
        if not as_pattern_list(self.targets):
            raise ValueError(
                "targets lists no module: use __ALL__, a class name like Linear, or module names"
            )
        return self

    def on_initialize(self, state: TrainingState) -> None:
        raise RecipeError(
            "runs without training only: use it with `sparseforge oneshot` (sparseforge.oneshot); "
            "to prune during training use GMPruningModifier or OBSPruningModifier, to quantize QuantizationModifier",
            modifier=self.name,
        )

    def schedule_events(self) -> list[tuple[float, str]]:
        return [(0.0, f"{self.name} (one-shot, by sparseforge oneshot before any training)")]

    # ----- which modules ----------------------------------------------------------------------
    def _matches(self, name: str, module: torch.nn.Module, patterns: list[str]) -> bool:
        for pattern in patterns:
            if pattern == ALL or pattern in {cls.__name__ for cls in type(module).__mro__}:
                return True
            if name and name_matches(name, pattern):
                return True
        return False

    def select_targets(self, model: torch.nn.Module) -> dict[str, torch.nn.Module]:
        """Compressible modules selected by `targets` (itself or an ancestor) minus `ignore`."""
        targets, ignore = as_pattern_list(self.targets), as_pattern_list(self.ignore)
        modules = dict(model.named_modules())
        for pattern in targets + ignore:
            special = pattern == ALL or ("." not in pattern and not pattern.startswith("re:"))
            if not special and not any(name_matches(name, pattern) for name in modules if name):
                sample = ", ".join(n for n in list(modules)[1:9])
                raise ModelMatchError(
                    f"{self.name}: '{pattern}' (targets/ignore) matches no module of the model; "
                    f"module names include: {sample}, ..."
                )
        blocks = block_names(model)
        selected, outside = {}, []
        for name, module in modules.items():
            if not is_compressible(module):
                continue
            chain = _ancestors(name, modules)
            if not any(self._matches(n, m, targets) for n, m in chain) or any(
                self._matches(n, m, ignore) for n, m in chain
            ):
                continue
            if any(inside(name, block) for block in blocks):
                selected[name] = module
            else:
                outside.append(name)
        if outside:
            logger.info(
                "%s: %s lie outside the repeated blocks and stay as they are",
                self.name,
                ", ".join(outside[:6]),
            )
        if not selected:
            raise ModelMatchError(
                f"{self.name}: targets {self.targets} (ignore {self.ignore}) select no Linear module "
                "inside the model's repeated blocks"
            )
        for name, module in selected.items():
            self.check_module(name, module)
        return selected

    # ----- compression -------------------------------------------------------------------------
    def compress(self, name: str, module: torch.nn.Module, hessian: InputHessian) -> dict[str, Any]:
        """Compress one module in place from its inputs' H; returns what the report shows."""
        raise NotImplementedError

    def check_module(self, name: str, module: torch.nn.Module) -> None:
        """Raise ModelMatchError if a selected module cannot take this modifier."""


class LayerwisePruningModifier(LayerwiseModifier):
    """Base of the calibrated one-shot pruners (see the module docstring)."""

    sparsity: float | None = None
    mask_structure: str = "0:0"

    @field_validator("mask_structure", mode="before")
    @classmethod
    def _check_structure(cls, value: Any) -> Any:
        parse_mask_structure(value)
        return str(value).strip()

    @field_validator("sparsity")
    @classmethod
    def _check_sparsity(cls, value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and 0.0 <= value < 1.0):
            raise ValueError(
                f"sparsity must be within [0, 1) (the fraction of weights pruned), got {value}"
            )
        return value

    @model_validator(mode="after")
    def _check_layerwise(self) -> LayerwisePruningModifier:
        structure = self.structure
        if structure.kind == "nm":
            if (
                self.sparsity is not None
                and abs(self.sparsity - structure.nm_sparsity) > NM_TOLERANCE
            ):
                raise ValueError(
                    f"mask_structure {self.mask_structure} prunes {structure.nm_sparsity:g} of the weights; "
                    f"set sparsity: {structure.nm_sparsity:g} or leave it out"
                )
        elif self.sparsity is None:
            raise ValueError(
                "sparsity is required with unstructured mask_structure '0:0' (e.g. sparsity: 0.5)"
            )
        return self

    @property
    def structure(self) -> MaskStructure:
        return parse_mask_structure(self.mask_structure)

    @property
    def target_sparsity(self) -> float:
        structure = self.structure
        return structure.nm_sparsity if structure.kind == "nm" else float(self.sparsity or 0.0)

    def check_module(self, name: str, module: torch.nn.Module) -> None:
        if self.structure.kind == "nm":
            columns = weight_matrix(module).shape[1]
            if columns % self.structure.m:
                raise ModelMatchError(
                    f"{self.name}: mask_structure {self.mask_structure} needs the input size of "
                    f"{name} ({columns}) to be a multiple of {self.structure.m}"
                )

    def prune_matrix(self, weight: torch.Tensor, hessian: InputHessian) -> torch.Tensor:
        """The pruned (out, in) float32 weight for this module's inputs; zeros are pruned."""
        raise NotImplementedError

    @torch.no_grad()
    def compress(
        self, name: str, module: torch.nn.Module, hessian: InputHessian
    ) -> dict[str, float]:
        """Prune one module in place from its inputs' H; returns its sparsity and relative error."""
        original = weight_matrix(module).float().clone()
        pruned = self.prune_matrix(original.clone(), hessian)
        set_weight_matrix(module, pruned)
        return {
            "sparsity": float((pruned == 0).sum()) / pruned.numel(),
            "relative_error": relative_error(original, pruned, hessian.matrix),
            "tokens": hessian.tokens,
        }


def _ancestors(name: str, modules: dict[str, torch.nn.Module]) -> list[tuple[str, torch.nn.Module]]:
    parts = name.split(".") if name else []
    prefixes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return [(prefix, modules[prefix]) for prefix in prefixes if prefix in modules]
