"""QuantizationModifier: quantization-aware training with SparseML's fields and schedule.

Two recipe forms, as in SparseML:

- legacy: `submodules`, `exclude_module_types`, `quantize_embeddings`,
  `quantize_linear_activations`, `quantize_embedding_activations`, `activation_bits`,
  `weight_bits`, `reduce_range`, `tensorrt`, `exclude_batchnorm`;
- newer: `scheme` (input_activations / weights / output_activations), `scheme_overrides`
  (keyed by module class name - `Linear`, `Embedding`, `QATMatMul` for the attention matmuls -
  or by module name / `re:` pattern) and `ignore` (class names or module names).

Both share `start_epoch`, `disable_quantization_observer_epoch`, `freeze_bn_stats_epoch`,
`num_calibration_steps`, `strict` (an `ignore` / `scheme_overrides` entry naming no module or
class of the model is an error; `strict: false` logs it). SparseML's torch.ao-only fields are
accepted so that the recipe.yaml SparseML saved loads: `activation_qconfig_kwargs` /
`weight_qconfig_kwargs` are honoured for `averaging_constant` and `reduce_range`,
`custom_quantizable_module_types` for Linear / Embedding subclasses; `model_fuse_fn_name`,
`model_fuse_fn_kwargs`, `quantize_conv_activations` and other qconfig keys have no meaning here
(no Conv/BatchNorm fusion or Conv QAT) and are accepted with one warning per process. At `start_epoch` every Linear (inputs always, weights, and outputs
when asked), Embedding (weights, outputs) and attention matmul (Q, K, probs, V) in scope gets
fake quantization with running observers; at `disable_quantization_observer_epoch` the observers
freeze. `apply_structure` rebuilds the same modules with frozen observers so a saved QAT
checkpoint reloads (`sparseforge.checkpoint.load_model`) and exports with identical outputs.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import PrivateAttr, field_validator, model_validator
from torch import nn

from sparseforge.errors import ModelMatchError
from sparseforge.modifiers.base import Modifier, TrainingState, register
from sparseforge.modifiers.quantization.attention import (
    AttentionQuantizers,
    attention_hook,
    is_attention_module,
    use_quantized_attention,
)
from sparseforge.modifiers.quantization.modules import (
    QuantizedEmbedding,
    QuantizedLinear,
    is_quantized,
    quantize_module_,
    quantized_class,
)
from sparseforge.modifiers.quantization.observers import fake_quantizers, set_observers
from sparseforge.modifiers.quantization.scheme import (
    ATTENTION,
    EMBEDDING,
    LINEAR,
    QuantizationScheme,
    legacy_schemes,
)
from sparseforge.modifiers.selection import name_matches, select_modules

logger = logging.getLogger(__name__)

_LEGACY_FIELDS = (
    "submodules",
    "exclude_module_types",
    "quantize_embeddings",
    "quantize_linear_activations",
    "quantize_embedding_activations",
    "activation_bits",
    "weight_bits",
    "reduce_range",
    "tensorrt",
    "exclude_batchnorm",
    "quantize_conv_activations",
    "activation_qconfig_kwargs",
    "weight_qconfig_kwargs",
    "custom_quantizable_module_types",
)
# What a SparseML qconfig kwarg can mean without torch.ao: the observer's averaging constant and
# the reduced range. Others (observer classes, dtypes, qschemes) are warned about and ignored.
_QCONFIG_KWARGS = ("averaging_constant", "reduce_range")
_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(message)


_SCHEME_FIELDS = ("scheme", "scheme_overrides", "ignore")
# Names by which a recipe may refer to the attention matmuls (SparseML's module was QATMatMul).
_ATTENTION_TYPE_NAMES = {ATTENTION, "MatMul"}


def is_quantized_class(cls: type) -> bool:
    return issubclass(cls, (QuantizedLinear, QuantizedEmbedding))


def _kind_of(module: nn.Module, custom_types: frozenset[str] = frozenset()) -> str | None:
    cls = type(module)
    if cls in (nn.Linear, QuantizedLinear):
        return LINEAR
    if cls in (nn.Embedding, QuantizedEmbedding):
        return EMBEDDING
    if isinstance(module, (QuantizedLinear, QuantizedEmbedding)) or cls.__name__ in custom_types:
        if quantized_class(cls) is not None or is_quantized(module):
            return LINEAR if isinstance(module, nn.Linear) else EMBEDDING
    if is_attention_module(module):
        return ATTENTION
    return None


@register
class QuantizationModifier(Modifier):
    """Quantization-aware training from `start_epoch` on; see the module docstring."""

    end_epoch: float = -1.0

    submodules: list[str] | None = None
    exclude_module_types: list[str] | None = None
    ignore: list[str] | None = None
    scheme: QuantizationScheme | None = None
    scheme_overrides: dict[str, QuantizationScheme] | None = None

    quantize_embeddings: bool = True
    quantize_linear_activations: bool = True
    quantize_embedding_activations: bool = True
    activation_bits: int = 8
    weight_bits: int = 8
    reduce_range: bool = False
    tensorrt: bool = False
    exclude_batchnorm: bool = True

    disable_quantization_observer_epoch: float | None = None
    freeze_bn_stats_epoch: float | None = None
    num_calibration_steps: int | None = None

    # SparseML's fields (see the module docstring for which are honoured).
    model_fuse_fn_name: str | None = None
    model_fuse_fn_kwargs: dict[str, Any] | None = None
    quantize_conv_activations: bool = True
    activation_qconfig_kwargs: dict[str, Any] | None = None
    weight_qconfig_kwargs: dict[str, Any] | None = None
    custom_quantizable_module_types: list[str] | None = None
    strict: bool = True

    _model: nn.Module | None = PrivateAttr(default=None)
    _qat_enabled: bool = PrivateAttr(default=False)
    _observers_frozen: bool = PrivateAttr(default=False)
    _bn_frozen: bool = PrivateAttr(default=False)
    _observed_steps: int = PrivateAttr(default=0)
    _bn_hooks: list[Any] = PrivateAttr(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _python_none(cls, data: Any) -> Any:
        # SparseML writes Python's repr into the recipe.yaml it saves: `model_fuse_fn_name: None`.
        if isinstance(data, dict):
            return {key: None if value == "None" else value for key, value in data.items()}
        return data

    @field_validator("scheme", mode="before")
    @classmethod
    def _load_scheme(cls, value: Any) -> Any:
        return None if value is None else QuantizationScheme.load(value)

    @field_validator("scheme_overrides", mode="before")
    @classmethod
    def _load_overrides(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise ValueError(
                "scheme_overrides must map module class names or module names to schemes"
            )
        return {str(key): QuantizationScheme.load(scheme) for key, scheme in value.items()}

    @field_validator("activation_bits", "weight_bits")
    @classmethod
    def _bits(cls, value: int) -> int:
        if not 2 <= value <= 8:
            raise ValueError(f"must be within 2..8 (ONNX export is 8-bit integer), got {value}")
        return value

    def needs_training_batches(self) -> bool:  # noqa: D102
        return bool(self.num_calibration_steps)

    @field_validator("num_calibration_steps")
    @classmethod
    def _steps(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"must be a positive number of steps, got {value}")
        return value

    @model_validator(mode="after")
    def _check_fields(self) -> QuantizationModifier:
        if self.end_epoch != -1:
            raise ValueError(
                f"end_epoch must stay -1 (quantization is never removed), got {self.end_epoch}"
            )
        for name in ("disable_quantization_observer_epoch", "freeze_bn_stats_epoch"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0 or null, got {value}")
        legacy = [
            name
            for name in _LEGACY_FIELDS
            if name in self.model_fields_set and name not in ("submodules", "exclude_module_types")
        ]
        newer = [name for name in _SCHEME_FIELDS if name in self.model_fields_set]
        if legacy and newer:
            raise ValueError(
                f"use either the legacy fields ({', '.join(legacy)}) or the scheme fields ({', '.join(newer)}), not both"
            )
        for name in ("activation_qconfig_kwargs", "weight_qconfig_kwargs"):
            _check_qconfig_kwargs(name, getattr(self, name))
        self._warn_unsupported()
        return self

    def _warn_unsupported(self) -> None:
        """SparseML's torch.ao-only fields: accepted, with one warning per process."""
        if self.model_fuse_fn_name not in (None, "no_fuse") or self.model_fuse_fn_kwargs:
            _warn_once(
                "model_fuse_fn",
                f"{self.name}: model_fuse_fn_name / model_fuse_fn_kwargs are ignored: sparseforge "
                "fuses no modules (it quantizes Linear, Embedding and attention, no Conv/BatchNorm)",
            )
        if "quantize_conv_activations" in self.model_fields_set:
            _warn_once(
                "quantize_conv_activations",
                f"{self.name}: quantize_conv_activations is ignored: sparseforge does not quantize "
                "Conv layers",
            )
        for name in ("activation_qconfig_kwargs", "weight_qconfig_kwargs"):
            ignored = sorted(set(getattr(self, name) or {}) - set(_QCONFIG_KWARGS))
            if ignored:
                _warn_once(
                    f"{name}:{','.join(ignored)}",
                    f"{self.name}: {name} {ignored} ignored (torch.ao observer settings); honoured: "
                    f"{', '.join(_QCONFIG_KWARGS)}",
                )

    # ----- planning -------------------------------------------------------------------------
    @property
    def uses_schemes(self) -> bool:
        return any(name in self.model_fields_set for name in _SCHEME_FIELDS)

    def _kind_schemes(self) -> dict[str, QuantizationScheme]:
        if not self.uses_schemes:
            return legacy_schemes(
                activation_bits=self.activation_bits,
                weight_bits=self.weight_bits,
                reduce_range=self.reduce_range,
                tensorrt=self.tensorrt,
                quantize_linear_activations=self.quantize_linear_activations,
                quantize_embedding_activations=self.quantize_embedding_activations,
                activation_kwargs=_honoured(self.activation_qconfig_kwargs),
                weight_kwargs=_honoured(self.weight_qconfig_kwargs),
            )
        base = self.scheme or QuantizationScheme()
        return {
            LINEAR: base,
            EMBEDDING: base.model_copy(update={"input_activations": None}),
            ATTENTION: base.model_copy(update={"weights": None, "output_activations": None}),
        }

    def _excluded_types(self) -> set[str]:
        names = set(self.exclude_module_types or [])
        if self.uses_schemes:
            names |= {
                entry
                for entry in self.ignore or []
                if not entry.startswith("re:") and "." not in entry
            }
        return names

    def _scheme_for(
        self, name: str, module: nn.Module, kind: str, kinds: dict[str, QuantizationScheme]
    ) -> QuantizationScheme:
        overrides = self.scheme_overrides or {}
        for key, scheme in overrides.items():
            if name_matches(name, key):
                return _for_kind(scheme, kind)
        type_names = {type(module).__name__, kind} | (
            _ATTENTION_TYPE_NAMES if kind == ATTENTION else set()
        )
        for key, scheme in overrides.items():
            if key in type_names:
                return _for_kind(scheme, kind)
        return kinds[kind]

    def plan(self, model: nn.Module) -> dict[str, tuple[nn.Module, str, QuantizationScheme]]:
        """{module name: (module, kind, scheme)} of every module QAT quantizes in `model`."""
        roots = (
            select_modules(model, self.submodules, owner=self.name)
            if self.submodules
            else {"": model}
        )
        excluded_types = self._excluded_types()
        excluded_attention = bool(excluded_types & _ATTENTION_TYPE_NAMES)
        module_names = dict(model.named_modules())
        ignored_names = [
            entry
            for entry in (self.ignore or [])
            if entry.startswith("re:") or "." in entry or entry in module_names
        ]
        custom = frozenset(self.custom_quantizable_module_types or ())
        kinds = self._kind_schemes()
        planned: dict[str, tuple[nn.Module, str, QuantizationScheme]] = {}
        for root_name, root in roots.items():
            for sub_name, module in root.named_modules():
                name = f"{root_name}.{sub_name}".strip(".") if sub_name else root_name
                kind = _kind_of(module, custom)
                if kind is None or name in planned:
                    continue
                if kind == EMBEDDING and not self.uses_schemes and not self.quantize_embeddings:
                    continue
                if kind == ATTENTION and excluded_attention:
                    continue
                if _is_excluded(model, name, excluded_types, ignored_names):
                    continue
                scheme = self._scheme_for(name, module, kind, kinds)
                if kind == ATTENTION and scheme.input_activations is None:
                    continue
                if scheme.weights is not None and kind != ATTENTION:
                    scheme.weights.check_weight(self.name, name, tuple(module.weight.shape))
                planned[name] = (module, kind, scheme)
        return planned

    def _quantize(self, model: nn.Module) -> int:
        """Insert fake quantization into every planned module (skipping those already quantized)."""
        attention_modules = []
        count = 0
        for name, (module, kind, scheme) in self.plan(model).items():
            if kind == ATTENTION:
                attention_modules.append(module)
            if is_quantized(module):
                continue
            if kind == ATTENTION:
                device = next(module.parameters()).device
                module.add_module(
                    "matmul_fake_quant", AttentionQuantizers(scheme.input_activations).to(device)
                )
            else:
                quantize_module_(module, scheme)
            count += 1
            logger.debug("%s: quantized %s (%s)", self.name, name, kind)
        if attention_modules:
            use_quantized_attention(model, attention_modules)
        return count

    # ----- lifecycle ------------------------------------------------------------------------
    def _check_targets(self, model: nn.Module) -> None:
        """Every ignore / scheme_overrides entry names a module or a module class of `model`
        (SparseML's `strict`), and every custom_quantizable_module_types entry a quantizable class."""
        modules = dict(model.named_modules())
        classes = {type(module).__name__: type(module) for module in modules.values()}
        kinds = {_kind_of(module) for module in modules.values()} - {None}
        if ATTENTION in kinds:
            kinds |= _ATTENTION_TYPE_NAMES
        entries = [("ignore", entry) for entry in self.ignore or []]
        entries += [("scheme_overrides", key) for key in self.scheme_overrides or {}]
        for field, entry in entries:
            if entry in classes or entry in kinds:
                continue
            if any(name and name_matches(name, entry) for name in modules):
                continue
            message = (
                f"{self.name}: {field} entry '{entry}' matches no module name or module class of "
                f"the model (classes include: {', '.join(sorted(classes)[:12])})"
            )
            if self.strict:
                raise ModelMatchError(message + "; set strict: false to only log this")
            logger.warning(message)
        for entry in self.custom_quantizable_module_types or []:
            if entry not in classes:
                raise ModelMatchError(
                    f"{self.name}: custom_quantizable_module_types entry '{entry}' is no module "
                    f"class of the model (classes include: {', '.join(sorted(classes)[:12])})"
                )
            if quantized_class(classes[entry]) is None and not is_quantized_class(classes[entry]):
                raise ModelMatchError(
                    f"{self.name}: custom_quantizable_module_types entry '{entry}' cannot be "
                    "quantized by sparseforge: only subclasses of nn.Linear / nn.Embedding that "
                    "keep their parent's forward are (no torch.ao QuantWrapper here)"
                )

    def on_initialize(self, state: TrainingState) -> None:
        self._model = state.model
        self._check_targets(state.model)
        planned = self.plan(state.model)
        if attention_hook() is None and any(kind == ATTENTION for _, kind, _ in planned.values()):
            use_quantized_attention(state.model, [])  # raises: say so before training starts
        if not planned:
            raise ModelMatchError(
                f"{self.name}: no Linear, Embedding or attention module to quantize under "
                f"submodules={self.submodules} with exclude_module_types={self.exclude_module_types}, ignore={self.ignore}"
            )
        if not self.exclude_batchnorm and _batchnorms(state.model):
            logger.warning(
                "%s: exclude_batchnorm=False: BatchNorm layers are not fake-quantized by sparseforge",
                self.name,
            )

    def on_start(self, state: TrainingState) -> None:
        count = self._quantize(state.model)
        self._qat_enabled = True
        logger.info(
            "%s: quantization-aware training started on %d module(s) at epoch %.3f",
            self.name,
            count,
            state.epoch,
        )
        if self.num_calibration_steps and state.grad_sampler is not None:
            self._calibrate(state)

    def on_update(self, state: TrainingState) -> None:
        epoch = state.epoch
        if not self._observers_frozen:
            calibrated = (
                self.num_calibration_steps is not None
                and state.grad_sampler is None
                and self._observed_steps >= self.num_calibration_steps
            )
            due = self.disable_quantization_observer_epoch is not None and epoch >= self._run_epoch(
                self.disable_quantization_observer_epoch
            )
            if due or calibrated:
                self._freeze_observers(state.model)
                logger.info("%s: observers frozen at epoch %.3f", self.name, epoch)
        bn_epoch = self.freeze_bn_stats_epoch
        if not self._bn_frozen and bn_epoch is not None and epoch >= self._run_epoch(bn_epoch):
            self._freeze_bn(state.model)
        if not self._observers_frozen:
            self._observed_steps += 1

    def on_finalize(self, state: TrainingState) -> None:
        # A finished QAT model must not change its scales when it is evaluated or exported.
        if self._qat_enabled:
            self._freeze_observers(state.model)

    def apply_structure(self, model: nn.Module) -> None:
        """Insert the same fake-quant modules as training did, observers frozen (for reload/export)."""
        self._quantize(model)
        set_observers(model, False)

    # ----- helpers --------------------------------------------------------------------------
    def _run_epoch(self, epoch: float) -> float:
        """An epoch field of this modifier in the run's time (stage offset applied)."""
        return epoch + self._epoch_offset

    def _freeze_observers(self, model: nn.Module) -> None:
        set_observers(model, False)
        self._observers_frozen = True

    def _freeze_bn(self, model: nn.Module) -> None:
        """SparseML's freeze_bn_stats: BatchNorm uses and keeps its running statistics from now on."""
        for _, module in _batchnorms(model):
            self._bn_hooks.append(module.register_forward_pre_hook(_bn_eval_hook))
        self._bn_frozen = True

    def _calibrate(self, state: TrainingState) -> None:
        """Run `num_calibration_steps` training batches through the model with observers on."""
        params = [p for p in state.model.parameters() if p.requires_grad]
        saved = [None if p.grad is None else p.grad.detach().clone() for p in params]
        for _ in state.grad_sampler(state.model, self.num_calibration_steps):
            pass
        for param, grad in zip(params, saved, strict=True):
            param.grad = grad
        logger.info(
            "%s: calibrated observers on %d batch(es)", self.name, self.num_calibration_steps
        )

    def schedule_events(self) -> list[tuple[float, str]]:
        events = [(max(self.scheduled_start, 0.0), "QAT starts")]
        if self.disable_quantization_observer_epoch is not None:
            events.append(
                (
                    self.disable_quantization_observer_epoch + self._epoch_offset,
                    "QAT observers frozen",
                )
            )
        if self.freeze_bn_stats_epoch is not None:
            events.append(
                (self.freeze_bn_stats_epoch + self._epoch_offset, "BatchNorm stats frozen")
            )
        return events

    def epoch_bounds(self) -> list[float]:
        bounds = super().epoch_bounds()
        for value in (self.disable_quantization_observer_epoch, self.freeze_bn_stats_epoch):
            if value is not None:
                bounds.append(value + self._epoch_offset)
        return bounds

    # ----- checkpointing --------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {
            "qat_enabled": self._qat_enabled,
            "observers_frozen": self._observers_frozen,
            "bn_frozen": self._bn_frozen,
            "observed_steps": self._observed_steps,
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Resume: rebuild the QAT modules on the bound model and restore the observer/BN flags.

        Load the model's weights (which hold the scales) after this, or before and again after.
        """
        self._qat_enabled = bool(state.get("qat_enabled", False))
        self._observers_frozen = bool(state.get("observers_frozen", False))
        self._observed_steps = int(state.get("observed_steps", 0))
        if self._model is None or not self._qat_enabled:
            return
        self._quantize(self._model)
        set_observers(self._model, not self._observers_frozen)
        if state.get("bn_frozen") and not self._bn_frozen:
            self._freeze_bn(self._model)


def _honoured(kwargs: dict[str, Any] | None) -> dict[str, Any]:
    return {key: value for key, value in (kwargs or {}).items() if key in _QCONFIG_KWARGS}


def _check_qconfig_kwargs(name: str, kwargs: dict[str, Any] | None) -> None:
    value = (kwargs or {}).get("averaging_constant")
    if value is not None and not (isinstance(value, (int, float)) and 0 < value <= 1):
        raise ValueError(f"{name}.averaging_constant must be within (0, 1], got {value!r}")
    reduce = (kwargs or {}).get("reduce_range")
    if reduce is not None and not isinstance(reduce, bool):
        raise ValueError(f"{name}.reduce_range must be true or false, got {reduce!r}")


def _for_kind(scheme: QuantizationScheme, kind: str) -> QuantizationScheme:
    if kind == EMBEDDING:
        return scheme.model_copy(update={"input_activations": None})
    return scheme


def _is_excluded(
    model: nn.Module, name: str, excluded_types: set[str], ignored_names: list[str]
) -> bool:
    """Excluded when the module or one of its parents has an excluded class or an ignored name."""
    parts = name.split(".") if name else []
    module = model
    prefixes = [""]
    chain = [model]
    for index, part in enumerate(parts):
        module = getattr(module, part)
        chain.append(module)
        prefixes.append(".".join(parts[: index + 1]))
    for prefix, module in zip(prefixes, chain, strict=True):
        if type(module).__name__ in excluded_types:
            return True
        if prefix and any(name_matches(prefix, pattern) for pattern in ignored_names):
            return True
    return False


def _batchnorms(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]


def _bn_eval_hook(module: nn.Module, _inputs: Any) -> None:
    module.train(False)


def quantization_summary(model: nn.Module) -> dict[str, int]:
    """How many fake quantizers a model holds and how many observers still run (for logs/tests)."""
    quantizers = fake_quantizers(model)
    return {
        "fake_quantizers": len(quantizers),
        "observers_running": sum(1 for q in quantizers.values() if q.observer_enabled),
    }


__all__ = ["QuantizationModifier", "quantization_summary"]
