"""`LayerPruningModifier`: remove whole layers (e.g. `bert.encoder.layer.11`) by identities.

`layers: __ALL_PRUNABLE__` selects every Linear and Conv layer, as SparseML does; a Linear or
Conv whose input and output sizes differ cannot be replaced by an identity and is an error at
`modify()` (SparseML failed at the first forward pass).

A removed layer is replaced by `LayerIdentity`, which returns its input hidden states in the form
the surrounding code expects: in transformers 5.x an encoder layer (BertLayer, RobertaLayer,
DistilBERT's TransformerBlock...) returns a tensor, so the identity returns the first input; a
layer whose `forward` is annotated to return a tuple gets `(hidden_states,)`.

As in SparseML, layers go at `start_epoch` and come back at `end_epoch` if one is set. A model
trained with the recipe is saved without those layers; `apply_structure` removes them from a
freshly built model so that the checkpoint loads into it.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any

import torch
from pydantic import PrivateAttr

from sparseforge.errors import ModelMatchError
from sparseforge.modifiers.base import Modifier, TrainingState, register
from sparseforge.modifiers.selection import ALL_PRUNABLE, as_pattern_list, select_modules

_LAYER_TYPES = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


class LayerIdentity(torch.nn.Module):
    """Stands in for a removed layer: returns the hidden states it is given."""

    def __init__(self, returns_tuple: bool = False, removed: str = ""):
        super().__init__()
        self.returns_tuple = returns_tuple
        self.removed = removed

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        hidden = args[0] if args else kwargs.get("hidden_states")
        return (hidden,) if self.returns_tuple else hidden

    def extra_repr(self) -> str:
        return f"removed={self.removed!r}"


def _returns_tuple(module: torch.nn.Module) -> bool:
    try:
        annotation = inspect.signature(module.forward).return_annotation
        if isinstance(annotation, str):
            return annotation.replace(" ", "").lower().startswith("tuple")
        return typing.get_origin(annotation) is tuple or annotation is tuple
    except (TypeError, ValueError):
        return False


def _prunable_layers(model: torch.nn.Module) -> list[str]:
    """SparseML's `__ALL_PRUNABLE__` for layers: every Linear and ConvNd module."""
    return [
        name for name, module in model.named_modules() if name and isinstance(module, _LAYER_TYPES)
    ]


def _io_sizes(module: torch.nn.Module) -> tuple[int, int] | None:
    """(input, output) features of a Linear / Conv; None for other modules."""
    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, _LAYER_TYPES):
        return module.in_channels, module.out_channels
    return None


def _check_identity_fits(owner: str, model: torch.nn.Module, names: list[str]) -> None:
    """An identity can stand in for a Linear / Conv only when it keeps the feature count."""
    for name in names:
        sizes = _io_sizes(model.get_submodule(name))
        if sizes is not None and sizes[0] != sizes[1]:
            raise ModelMatchError(
                f"{owner}: layer {name} maps {sizes[0]} features to {sizes[1]}: an identity cannot "
                "replace it (the next layer would get the wrong size); list layers whose input "
                "and output sizes match, e.g. whole encoder layers"
            )


def replace_module(model: torch.nn.Module, name: str, new: torch.nn.Module) -> torch.nn.Module:
    """Put `new` at dotted `name` in `model`; returns the module it replaced."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = parent.get_submodule(child)
    setattr(parent, child, new)
    return old


@register
class LayerPruningModifier(Modifier):
    """Replaces `layers` by identities from `start_epoch` (until `end_epoch` if set)."""

    layers: str | list[str]
    update_frequency: float = -1.0  # unused, as in SparseML

    _removed: dict[str, torch.nn.Module] = PrivateAttr(default_factory=dict)
    _names: list[str] = PrivateAttr(default_factory=list)
    _state_model: torch.nn.Module | None = PrivateAttr(default=None)

    def _select(self, model: torch.nn.Module) -> list[str]:
        patterns = as_pattern_list(self.layers)
        names = [] if patterns != [ALL_PRUNABLE] else _prunable_layers(model)
        if ALL_PRUNABLE in patterns and not names:
            raise ModelMatchError(
                f"{self.name}: layers {ALL_PRUNABLE} stands alone (no other entries) and needs "
                "Linear or Conv layers in the model"
            )
        if not names:
            names = list(select_modules(model, patterns, owner=self.name, field="layers"))
        _check_identity_fits(self.name, model, names)
        # a selected module inside another selected one goes with its parent
        return [
            n for n in names if not any(n.startswith(other + ".") for other in names if other != n)
        ]

    def on_initialize(self, state: TrainingState) -> None:
        self._state_model = state.model
        self._names = self._select(state.model)

    def remove_layers(self, model: torch.nn.Module) -> None:
        for name in self._names:
            current = model.get_submodule(name)
            if isinstance(current, LayerIdentity):
                continue
            self._removed[name] = replace_module(
                model, name, LayerIdentity(_returns_tuple(current), name)
            )

    def restore_layers(self, model: torch.nn.Module) -> None:
        for name, module in self._removed.items():
            replace_module(model, name, module)
        self._removed = {}

    def on_start(self, state: TrainingState) -> None:
        self.remove_layers(state.model)
        for name in self._names:
            state.logs[f"layer_pruned/{name}"] = 1.0

    def on_end(self, state: TrainingState) -> None:
        self.restore_layers(state.model)
        for name in self._names:
            state.logs[f"layer_pruned/{name}"] = 0.0

    def on_finalize(self, state: TrainingState) -> None:
        # SparseML finalizes as if at epoch infinity: removed unless an end_epoch brings them back.
        if self.scheduled_end >= 0:
            self.restore_layers(state.model)
        else:
            self.remove_layers(state.model)

    def apply_structure(self, model: torch.nn.Module) -> None:
        if self.scheduled_end >= 0:
            return  # the layers came back at end_epoch: the trained model has them
        if not self._names:
            self._names = self._select(model)
        self.remove_layers(model)
        self._removed = {}

    def extra_state(self) -> dict[str, Any]:
        return {"removed": sorted(self._removed)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if (
            state.get("removed")
            and self.started
            and not self.ended
            and self._state_model is not None
        ):
            self.remove_layers(self._state_model)

    def schedule_events(self) -> list[tuple[float, str]]:
        layers = ", ".join(as_pattern_list(self.layers))
        events = [(max(self.scheduled_start, 0.0), f"{self.name} removes {layers}")]
        if self.scheduled_end >= 0:
            events.append((self.scheduled_end, f"{self.name} restores {layers}"))
        return events
