"""Knowledge distillation: `DistillationModifier` (output KL) and `PerLayerDistillationModifier`
(feature imitation), with SparseML's fields and formulas.

The teacher is `state.teacher`: a frozen module, or None (the modifier then does nothing, as in
SparseML). `Manager.modify(..., distillation_teacher=teacher)` settles it once with
`resolve_teacher`: a module, `"self"` (a frozen copy of the model as it is at `modify()`), or
`"disable"` / None. The training loop calls

    loss = manager.loss_update(loss, student_outputs=outputs, student_inputs=inputs)

after the student's forward pass and before backward. The keyword arguments, shared by both
modifiers:

    student_outputs   the student's outputs: a Hugging Face ModelOutput / dict, a tuple or a tensor
    student_inputs    what the student was called with: a dict of keyword inputs (Hugging Face),
                      a tensor (`model(x)`, a torchvision-style model) or a tuple / list of
                      positional inputs (`model(*inputs)`), as in SparseML
    teacher_inputs    optional: what to feed the teacher instead (default: `student_inputs` filtered
                      by `teacher_input_keys`, else by the teacher's forward signature; label keys
                      are dropped because the teacher's own loss is not used)
    teacher_outputs   optional: the teacher's outputs, when the caller already ran the teacher

The teacher always runs in eval mode under `torch.no_grad()`.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import PrivateAttr, field_validator, model_validator

from sparseforge.errors import ModelMatchError
from sparseforge.modifiers.base import Modifier, TrainingState, register
from sparseforge.modifiers.selection import select_modules

logger = logging.getLogger(__name__)

# Inputs that only make a model compute its own loss: never fed to the teacher.
LABEL_KEYS = frozenset(
    {"labels", "label", "start_positions", "end_positions", "next_sentence_label"}
)


# ----- formulas --------------------------------------------------------------------------------
def kl_logsoftmax(
    student: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float,
    row_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """SparseML's per-row distillation term: sum KL(softmax(t/T) || softmax(s/T)) * T^2 / rows.

    A row is one distribution over the last dimension (a sequence's logits, or a token's).
    `row_mask` (shape of the rows, 1 = counts) leaves padded tokens out of the sum and the count.
    """
    kl = F.kl_div(
        F.log_softmax(student / temperature, dim=-1),
        F.log_softmax(teacher / temperature, dim=-1),
        log_target=True,
        reduction="none",
    ).sum(-1)
    if row_mask is None:
        return kl.sum() * (temperature**2) / kl.numel()
    return (kl * row_mask).sum() * (temperature**2) / row_mask.sum().clamp(min=1)


def token_mask(inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
    """The real-token mask (float, 1 = counts) for a per-token output: `attention_mask` of a dict
    of inputs when its shape is the output's without the last dimension, else None (one row
    per sequence, or no mask given). Padded positions carry no information to distill, and with
    dynamic padding they are a batch-dependent share of the rows."""
    if not isinstance(inputs, Mapping):
        return None
    mask = inputs.get("attention_mask")
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(output.shape[:-1]):
        return None
    return mask.to(device=output.device, dtype=torch.float32)


def output_items(
    outputs: Any, keys: list[str | int] | None
) -> list[tuple[str | int, torch.Tensor]]:
    """(key, tensor) pairs to distill: `keys` if given, else every `*logits` entry of a mapping
    (all entries of a tuple, or the tensor itself)."""
    if isinstance(outputs, torch.Tensor):
        return [(0, outputs)]
    if isinstance(outputs, Mapping):
        if keys:
            missing = [key for key in keys if key not in outputs]
            if missing:
                raise ModelMatchError(
                    f"DistillationModifier: distill_output_keys {missing} are not among the model's outputs "
                    f"({', '.join(map(str, outputs))})"
                )
            return [(key, outputs[key]) for key in keys]
        chosen = [(key, value) for key, value in outputs.items() if str(key).endswith("logits")]
        if not chosen:
            chosen = [
                (key, value)
                for key, value in outputs.items()
                if key != "loss" and isinstance(value, torch.Tensor)
            ]
        return chosen
    if isinstance(outputs, (tuple, list)):
        if keys:
            return [(index, outputs[int(index)]) for index in keys]
        return [
            (index, value) for index, value in enumerate(outputs) if isinstance(value, torch.Tensor)
        ]
    raise ModelMatchError(
        f"DistillationModifier: cannot distill outputs of type {type(outputs).__name__}"
    )


def filter_teacher_inputs(
    teacher: torch.nn.Module, inputs: Mapping[str, Any], keys: list[str] | None
) -> dict[str, Any]:
    """The inputs the teacher accepts: `keys` if given, else those its forward signature names
    (all when it takes **kwargs); label keys are dropped unless listed in `keys`."""
    if keys:
        missing = [key for key in keys if key not in inputs]
        if missing:
            raise ModelMatchError(
                f"teacher_input_keys {missing} are not among the student's inputs ({', '.join(inputs)})"
            )
        return {key: inputs[key] for key in keys}
    params = inspect.signature(teacher.forward).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return {
        key: value
        for key, value in inputs.items()
        if key not in LABEL_KEYS and (takes_any or key in params)
    }


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _first_tensor(value: Any) -> torch.Tensor:
    """A layer's output as one tensor (transformer blocks return tuples: hidden states first)."""
    while isinstance(value, (tuple, list)):
        value = value[0]
    if isinstance(value, Mapping):
        value = next(iter(value.values()))
    return value


def resolve_teacher(
    teacher: torch.nn.Module | str | None, model: torch.nn.Module
) -> torch.nn.Module | None:
    """The one place a distillation teacher is settled: None / "disable" -> None (no
    distillation), "self" -> a copy of `model` as it is now, a module -> itself; the module
    returned is frozen and in eval mode. Modifiers receive what this returns."""
    if teacher is None or (isinstance(teacher, str) and teacher == "disable"):
        return None
    if isinstance(teacher, str) and teacher == "self":
        teacher = copy.deepcopy(model)
        logger.info("self-distillation from a frozen copy of the starting model")
    if not isinstance(teacher, torch.nn.Module):
        raise ModelMatchError(
            f"distillation_teacher must be a torch module, 'self' or 'disable', got {teacher!r}"
        )
    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher


class _TeacherMixin:
    """Binding `state.teacher` (a frozen module or None) and running it, shared by both
    distillation modifiers."""

    _teacher: torch.nn.Module | None
    _enabled: bool

    def _bind_teacher(self, state: TrainingState) -> None:
        teacher = state.teacher
        if teacher is None:
            logger.warning(
                "%s: no distillation teacher: distillation is disabled", type(self).__name__
            )
            self._teacher, self._enabled = None, False
            return
        if not isinstance(teacher, torch.nn.Module):
            raise ModelMatchError(
                f"{type(self).__name__}: the distillation teacher must be a torch module or None, got {teacher!r}"
            )
        self._teacher, self._enabled = teacher, True

    def _run_teacher(
        self, state: TrainingState, inputs: Mapping[str, Any], keys: list[str] | None
    ) -> Any:
        """The teacher's outputs on `inputs`. Run once per loss update: a second modifier with
        the same teacher and the same input tensors (output and per-layer distillation in one
        recipe) gets the first run's outputs, and forward hooks on the teacher have fired then."""
        teacher = self._teacher
        assert teacher is not None
        args, kwargs = teacher_call(teacher, inputs, keys, owner=type(self).__name__)
        earlier = state.loss_update_cache.get("teacher_run")
        if (
            earlier is not None
            and earlier[0] is teacher
            and _same_objects(earlier[1], (args, kwargs))
        ):
            return earlier[2]
        tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]
        first_param = next(teacher.parameters(), None)
        if tensors and first_param is not None and first_param.device != tensors[0].device:
            teacher.to(tensors[0].device)
        teacher.eval()
        with torch.no_grad():
            outputs = teacher(*args, **kwargs)
        state.loss_update_cache["teacher_run"] = (teacher, (args, kwargs), outputs)
        return outputs


def teacher_call(
    teacher: torch.nn.Module, inputs: Any, keys: list[str] | None, owner: str = "distillation"
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """(args, kwargs) to call the teacher with: a dict is filtered to what the teacher takes, a
    tensor is the one positional input, a tuple / list the positional inputs (SparseML's rule)."""
    if isinstance(inputs, Mapping):
        return (), filter_teacher_inputs(teacher, inputs, keys)
    if keys:
        raise ModelMatchError(
            f"{owner}: teacher_input_keys {keys} need the inputs as a dict of named inputs, "
            f"got {type(inputs).__name__}"
        )
    if isinstance(inputs, torch.Tensor):
        return (inputs,), {}
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    raise ModelMatchError(
        f"{owner}: student_inputs must be a dict, a tensor or a tuple / list of inputs, "
        f"got {type(inputs).__name__}"
    )


def _same_objects(first: tuple[tuple, dict], second: tuple[tuple, dict]) -> bool:
    """The same positional and keyword inputs, as the very same objects (tensors by identity)."""
    (args_a, kwargs_a), (args_b, kwargs_b) = first, second
    return (
        len(args_a) == len(args_b)
        and all(a is b for a, b in zip(args_a, args_b, strict=True))
        and kwargs_a.keys() == kwargs_b.keys()
        and all(kwargs_a[key] is kwargs_b[key] for key in kwargs_a)
    )


def _given(kwargs: Mapping[str, Any], *names: str) -> Any:
    """The first of `names` passed and not None (tensors cannot be tested with `or`)."""
    return next((kwargs[name] for name in names if kwargs.get(name) is not None), None)


@register
class DistillationModifier(_TeacherMixin, Modifier):
    """loss = (1 - hardness) * task loss + hardness * mean over output keys of the per-row
    KL(softmax(teacher / T) || softmax(student / T)) * T^2  (SparseML's formula)."""

    hardness: float = 0.5
    temperature: float = 2.0
    distill_output_keys: list[str | int] | None = None
    teacher_input_keys: list[str] | None = None
    update_frequency: float = -1.0  # accepted for SparseML recipes; the loss changes every step

    _teacher: torch.nn.Module | None = PrivateAttr(default=None)
    _enabled: bool = PrivateAttr(default=False)

    @field_validator("hardness")
    @classmethod
    def _check_hardness(cls, value: float) -> float:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"hardness must be within [0, 1], got {value}")
        return value

    @field_validator("temperature")
    @classmethod
    def _check_temperature(cls, value: float) -> float:
        if value <= 0:
            raise ValueError(f"temperature must be > 0, got {value}")
        return value

    def on_initialize(self, state: TrainingState) -> None:
        self._bind_teacher(state)

    def distillation_loss(
        self, student_outputs: Any, teacher_outputs: Any, inputs: Any = None
    ) -> torch.Tensor:
        """Mean over the distilled outputs of `kl_logsoftmax` (the term `hardness` weighs);
        per-token outputs count the tokens `inputs`' attention_mask keeps (`token_mask`)."""
        student_items = output_items(student_outputs, self.distill_output_keys)
        keys = [key for key, _ in student_items]
        teacher_items = dict(output_items(teacher_outputs, keys))
        losses = []
        for key, student in student_items:
            teacher = teacher_items[key]
            if student.shape != teacher.shape:
                raise ModelMatchError(
                    f"DistillationModifier: output '{key}' has shape {tuple(student.shape)} in the student "
                    f"but {tuple(teacher.shape)} in the teacher; distillation needs the same head"
                )
            losses.append(
                kl_logsoftmax(
                    student.float(),
                    teacher.float().detach(),
                    self.temperature,
                    token_mask(inputs, student),
                )
            )
        if not losses:
            raise ModelMatchError("DistillationModifier: the model returned no outputs to distill")
        return sum(losses) / len(losses)

    def loss_update(self, loss: torch.Tensor, state: TrainingState, **kwargs: Any) -> torch.Tensor:
        if not self._enabled:
            return loss
        student_outputs = kwargs.get("student_outputs")
        teacher_outputs = kwargs.get("teacher_outputs")
        if student_outputs is None:
            raise ModelMatchError(
                "DistillationModifier: loss_update needs student_outputs=... (and student_inputs=...)"
            )
        if teacher_outputs is None:
            inputs = _given(kwargs, "teacher_inputs", "student_inputs")
            if inputs is None:
                raise ModelMatchError(
                    "DistillationModifier: loss_update needs student_inputs=... to run the teacher"
                )
            keys = None if kwargs.get("teacher_inputs") is not None else self.teacher_input_keys
            teacher_outputs = self._run_teacher(state, inputs, keys)
        teacher_loss = self.distillation_loss(
            student_outputs, teacher_outputs, kwargs.get("student_inputs")
        )
        total = (1.0 - self.hardness) * loss + self.hardness * teacher_loss
        state.logs["distillation/task_loss"] = float(loss.detach())
        state.logs["distillation/teacher_loss"] = float(teacher_loss.detach())
        state.logs["distillation/total_loss"] = float(total.detach())
        return total

    def on_finalize(self, state: TrainingState) -> None:
        self._teacher, self._enabled = None, False


def _feature_size(module: torch.nn.Module) -> int | None:
    """The last dimension of `module`'s output when its type tells it, else None."""
    for attr in ("out_features", "embedding_dim", "out_channels"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    shape = getattr(module, "normalized_shape", None)
    if shape:
        return int(shape[-1])
    return None


_DEFAULT_LAYER_TYPES = (torch.nn.Linear, torch.nn.Conv2d)


@register
class PerLayerDistillationModifier(_TeacherMixin, Modifier):
    """loss = task loss + gain * sum over layer pairs of mean((P(s) - t)^2), divided by
    mean(t^2) + epsilon when `normalize`; P is a learned bias-free projection when
    `project_features` (SparseML's feature imitation)."""

    gain: float = 1.5
    normalize: bool = True
    student_layer_names: list[str] | None = None
    teacher_layer_names: list[str] | None = None
    project_features: bool = True
    epsilon: float = 1e-6
    update_frequency: float = -1.0  # accepted for SparseML recipes

    _teacher: torch.nn.Module | None = PrivateAttr(default=None)
    _enabled: bool = PrivateAttr(default=False)
    _pairs: list[tuple[str, str]] = PrivateAttr(default_factory=list)
    _handles: list[Any] = PrivateAttr(default_factory=list)
    _student_cache: dict[str, torch.Tensor] = PrivateAttr(default_factory=dict)
    _teacher_cache: dict[str, torch.Tensor] = PrivateAttr(default_factory=dict)
    _projections: dict[str, torch.nn.Module] = PrivateAttr(default_factory=dict)
    _pending_projection_state: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _check_layers(self) -> PerLayerDistillationModifier:
        student, teacher = self.student_layer_names, self.teacher_layer_names
        if student is not None and teacher is not None and len(student) != len(teacher):
            raise ValueError(
                f"student_layer_names ({len(student)}) and teacher_layer_names ({len(teacher)}) must pair one to one"
            )
        if self.epsilon <= 0:
            raise ValueError(f"epsilon must be > 0, got {self.epsilon}")
        return self

    # ----- setup ---------------------------------------------------------------------------
    def _layers(
        self, model: torch.nn.Module, names: list[str] | None, field: str
    ) -> dict[str, torch.nn.Module]:
        if names is None:
            return {n: m for n, m in model.named_modules() if type(m) in _DEFAULT_LAYER_TYPES}
        layers = {}
        for name in names:  # one by one: the i-th student layer pairs with the i-th teacher layer
            hits = select_modules(model, name, owner=self.name, field=field)
            if len(hits) != 1:
                raise ModelMatchError(
                    f"{self.name}: {field} entry '{name}' matches {len(hits)} modules; name one module"
                )
            layers.update(hits)
        return layers

    def on_initialize(self, state: TrainingState) -> None:
        self._bind_teacher(state)
        if not self._enabled:
            return
        student_names = self.student_layer_names or self.teacher_layer_names
        teacher_names = self.teacher_layer_names or self.student_layer_names
        student_layers = self._layers(state.model, student_names, "student_layer_names")
        teacher_layers = self._layers(self._teacher, teacher_names, "teacher_layer_names")
        if len(student_layers) != len(teacher_layers):
            raise ModelMatchError(
                f"{self.name}: {len(student_layers)} student layers but {len(teacher_layers)} teacher layers; "
                "set student_layer_names and teacher_layer_names explicitly"
            )
        self._pairs = list(zip(student_layers, teacher_layers, strict=True))
        self._remove_hooks()
        for name, layer in student_layers.items():
            self._handles.append(
                layer.register_forward_hook(self._cache_hook(name, self._student_cache))
            )
        for name, layer in teacher_layers.items():
            self._handles.append(
                layer.register_forward_hook(self._cache_hook(name, self._teacher_cache))
            )
        if self.project_features:
            self._projections = {}
            for s_name, t_name in self._pairs:
                s_dim, t_dim = (
                    _feature_size(student_layers[s_name]),
                    _feature_size(teacher_layers[t_name]),
                )
                if s_dim is not None and t_dim is not None:
                    self._add_projection(
                        state, s_name, s_dim, t_dim, next(state.model.parameters()).device
                    )

    @staticmethod
    def _cache_hook(name: str, cache: dict[str, torch.Tensor]) -> Any:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            cache[name] = _first_tensor(output)

        return hook

    def _add_projection(
        self, state: TrainingState, name: str, s_dim: int, t_dim: int, device: torch.device
    ) -> None:
        """A bias-free Linear trained with the model: its parameters join the optimizer (own param
        group) but not the model, so saved weights leave it out."""
        projection = torch.nn.Linear(s_dim, t_dim, bias=False).to(device)
        if name in self._pending_projection_state:
            projection.load_state_dict(self._pending_projection_state.pop(name))
        if _world_size() > 1:  # every rank starts from rank 0's projection
            for param in projection.parameters():
                torch.distributed.broadcast(param.data, src=0)
        self._projections[name] = projection
        if state.optimizer is not None:
            state.optimizer.add_param_group(
                {"params": list(projection.parameters()), "weight_decay": 0.0}
            )

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._student_cache.clear()
        self._teacher_cache.clear()

    # ----- training ------------------------------------------------------------------------
    def loss_update(self, loss: torch.Tensor, state: TrainingState, **kwargs: Any) -> torch.Tensor:
        if not self._enabled:
            return loss
        inputs = _given(kwargs, "teacher_inputs", "student_inputs")
        if inputs is None:
            raise ModelMatchError(
                f"{self.name}: loss_update needs student_inputs=... to run the teacher"
            )
        self._run_teacher(
            state, inputs, None
        )  # fills _teacher_cache through the hooks, now or in an earlier modifier's run
        feature_loss = loss.new_zeros(())
        for s_name, t_name in self._pairs:
            student = self._student_cache.get(s_name)
            teacher = self._teacher_cache.get(t_name)
            if student is None or teacher is None:
                raise ModelMatchError(
                    f"{self.name}: layer '{s_name if student is None else t_name}' produced no output in this forward pass"
                )
            if self.project_features:
                if s_name not in self._projections:
                    logger.warning(
                        "%s: projection for '%s' created lazily (its output size is only known now)",
                        self.name,
                        s_name,
                    )
                    self._add_projection(
                        state, s_name, student.shape[-1], teacher.shape[-1], student.device
                    )
                student = self._projections[s_name](student.float())
            if student.shape != teacher.shape:
                raise ModelMatchError(
                    f"{self.name}: student layer '{s_name}' gives shape {tuple(student.shape)}, teacher layer "
                    f"'{t_name}' gives {tuple(teacher.shape)}; set project_features: True or pick matching layers"
                )
            mask = token_mask(inputs, teacher)
            if mask is None:
                mse = (student.float() - teacher.float()).square().mean()
                power = teacher.float().square().mean() if self.normalize else None
            else:  # padded tokens left out (`token_mask`)
                count = mask.sum().clamp(min=1) * teacher.shape[-1]
                mask = mask.unsqueeze(-1)
                mse = ((student.float() - teacher.float()).square() * mask).sum() / count
                power = (teacher.float().square() * mask).sum() / count if self.normalize else None
            if power is not None:
                mse = mse / (power + self.epsilon)
            feature_loss = feature_loss + mse
        self._student_cache.clear()  # so a layer that does not fire next time is an error, not a stale value
        self._teacher_cache.clear()
        total = loss + self.gain * feature_loss
        state.logs["distillation/layer_loss"] = float(feature_loss.detach())
        return total

    @torch.no_grad()
    def optimizer_pre_step(self, state: TrainingState) -> None:
        # The projections are not in the DDP-wrapped model, so DDP does not average their
        # gradients: do it here, once per optimizer step, or each rank trains its own.
        world_size = _world_size()
        if world_size <= 1:
            return
        for param in self.projection_parameters():
            if param.grad is not None:  # the same on every rank: they run the same loss
                torch.distributed.all_reduce(param.grad)
                param.grad.div_(world_size)

    def on_end(self, state: TrainingState) -> None:
        self._remove_hooks()

    def on_finalize(self, state: TrainingState) -> None:
        self._remove_hooks()
        self._teacher, self._enabled = None, False

    # ----- checkpointing -------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"projections": {name: p.state_dict() for name, p in self._projections.items()}}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        for name, weights in (state.get("projections") or {}).items():
            if name in self._projections:
                self._projections[name].load_state_dict(weights)
            else:
                self._pending_projection_state[name] = weights

    def projection_parameters(self) -> list[torch.nn.Parameter]:
        """The learned projections' parameters (not part of the model's weights)."""
        return [p for projection in self._projections.values() for p in projection.parameters()]
