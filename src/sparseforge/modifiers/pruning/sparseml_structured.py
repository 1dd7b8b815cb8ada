"""SparseML's `StructuredPruningModifier` and `LayerThinningModifier`, mapped onto the groups of
`structured.py` so that SparseML recipes that name them run on transformers encoders.

`StructuredPruningModifier` (SparseML: GMP over filters or channels of named parameters) keeps its
fields: `params`, coupled `param_groups`, `mask_type: filter|channel`, `init_sparsity`,
`final_sparsity`, the schedule and `leave_enabled`. Each selected parameter must be part of a
structural group of an encoder layer, along the dimension `mask_type` names:

    filter  (output rows)    Q/K/V of a layer -> its attention heads; FFN in  -> its FFN neurons
    channel (input columns)  attention output -> its attention heads; FFN out -> its FFN neurons

so a head's rows (or a neuron's row and column) are always pruned together, whichever of the
coupled tensors the recipe names (`param_groups` is accepted and checked: the tensors of a group
must map to the same structure of the same layer). As in SparseML each layer is pruned to the
target apart (magnitude, L2), masks stay until `LayerThinningModifier` removes what they pruned.
Parameters of a `__ALL_PRUNABLE__` selection outside any group (embeddings, classifier) are left
alone; a named parameter outside every group is a ModelMatchError.

`LayerThinningModifier` removes, at `start_epoch` and each of `update_epochs` (else at finalize),
what the run's structured pruning modifiers pruned, and any head / neuron whose weights are all
zero; the optimizer follows. `param_group_dependency_map` is checked against the model (the
dependencies are found from the model itself), `structure_type` and `strict` are accepted.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, PrivateAttr, field_validator, model_validator

from sparseforge.errors import ModelMatchError
from sparseforge.modifiers.base import Modifier, TrainingState, register
from sparseforge.modifiers.pruning.compaction import compact_model, zeroed_groups
from sparseforge.modifiers.pruning.groups import EncoderGroups, find_encoder_groups
from sparseforge.modifiers.pruning.structured import STRUCTURED_MODIFIERS, GroupPruningModifier
from sparseforge.modifiers.selection import ALL, ALL_PRUNABLE, as_pattern_list, select_parameters

logger = logging.getLogger(__name__)

# (role in the layer, mask_type) -> structure
_ROLE_STRUCTURE = {
    ("q", "filter"): "heads",
    ("k", "filter"): "heads",
    ("v", "filter"): "heads",
    ("o", "channel"): "heads",
    ("ffn_in", "filter"): "neurons",
    ("ffn_out", "channel"): "neurons",
}


def param_structures(groups: EncoderGroups) -> dict[str, tuple[str, int]]:
    """Parameter name -> (role, layer index) for every weight and bias of the encoder groups."""
    found = {}
    for layer in groups.layers:
        for role in ("q", "k", "v", "o", "ffn_in", "ffn_out"):
            module = getattr(layer, role)
            for kind in ("weight", "bias"):
                found[f"{module}.{kind}"] = (role, layer.index)
    return found


@register
class StructuredPruningModifier(GroupPruningModifier):
    """SparseML's structured (filter / channel) GMP, mapped onto heads and FFN neurons."""

    params_define_groups: ClassVar[bool] = True

    params: str | list[str] = Field(default=ALL_PRUNABLE)
    param_groups: list[list[str]] | None = None
    mask_type: Literal["filter", "channel"] = "filter"
    init_sparsity: float = 0.0
    final_sparsity: float
    leave_enabled: bool = True
    score: Literal["magnitude", "first_order", "movement"] = "magnitude"
    compact: bool = False
    global_sparsity: bool = False  # each layer to the target apart, as SparseML

    @field_validator("mask_type", mode="before")
    @classmethod
    def _check_mask_type(cls, value: Any) -> Any:
        if value not in ("filter", "channel"):
            raise ValueError(
                f"StructuredPruningModifier mask_type must be 'filter' or 'channel', got {value!r}"
            )
        return value

    def select_groups_from_params(self, model: torch.nn.Module, groups: EncoderGroups) -> None:
        roles = param_structures(groups)
        patterns = as_pattern_list(self.params)
        selected = select_parameters(model, patterns, owner=self.name)
        broad = any(p in (ALL, ALL_PRUNABLE) for p in patterns)
        layer_filter: dict[str, set[int]] = {}
        unmatched = []
        for name in selected:
            structure = self._structure_of(name, roles)
            if structure is None:
                unmatched.append(name)
                continue
            layer_filter.setdefault(structure, set()).add(roles[name][1])
        if unmatched and not broad:
            raise ModelMatchError(
                f"{self.name}: params {unmatched[:4]} are not part of a structure that mask_type "
                f"{self.mask_type!r} can remove (filter: Q/K/V weights -> heads, FFN input -> neurons; "
                "channel: attention output -> heads, FFN output -> neurons)"
            )
        if not layer_filter:
            raise ModelMatchError(
                f"{self.name}: params select no head or FFN neuron of the encoder with mask_type {self.mask_type!r}"
            )
        self._check_param_groups(model, roles)
        self._layer_filter = layer_filter

    def _structure_of(self, name: str, roles: dict[str, tuple[str, int]]) -> str | None:
        if name not in roles or not name.endswith(".weight"):
            return None
        return _ROLE_STRUCTURE.get((roles[name][0], self.mask_type))

    def _check_param_groups(
        self, model: torch.nn.Module, roles: dict[str, tuple[str, int]]
    ) -> None:
        names = dict(model.named_parameters())
        for group in self.param_groups or []:
            missing = [n for n in group if n not in names]
            if missing:
                raise ModelMatchError(
                    f"{self.name}: param_groups entry {missing[0]!r} is not a parameter of the model"
                )
            coupled = {
                (
                    _ROLE_STRUCTURE.get((roles[n][0], "filter"))
                    or _ROLE_STRUCTURE.get((roles[n][0], "channel")),
                    roles[n][1],
                )
                if n in roles
                else None
                for n in group
            }
            if len(coupled) != 1 or None in coupled:
                raise ModelMatchError(
                    f"{self.name}: param_groups {group} do not share one structure of one layer "
                    "(heads: Q/K/V and attention output; neurons: FFN input and output)"
                )


@register
class LayerThinningModifier(Modifier):
    """SparseML's thinning: physically remove what structured pruning pruned (module docstring)."""

    param_group_dependency_map: dict[str, list[str]] = Field(default_factory=dict)
    structure_type: Literal["filter", "channel"] = "filter"
    update_epochs: list[float] = Field(default_factory=list)
    strict: bool = True

    _thinned_at: float = PrivateAttr(default=float("-inf"))
    _pending: list[float] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> LayerThinningModifier:
        if self.end_epoch != -1:
            raise ValueError("end_epoch is not used by LayerThinningModifier (SparseML forces -1)")
        if sorted(set(self.update_epochs)) != list(self.update_epochs):
            raise ValueError(
                f"update_epochs must be sorted without repeats, got {self.update_epochs}"
            )
        return self

    def on_initialize(self, state: TrainingState) -> None:
        names = dict(state.model.named_parameters())
        for key, deps in self.param_group_dependency_map.items():
            for name in [*key.split(","), *deps]:
                if name.strip() and name.strip() not in names:
                    raise ModelMatchError(
                        f"{self.name}: param_group_dependency_map names {name.strip()!r}, not a parameter of the model"
                    )
        find_encoder_groups(state.model, owner=self.name)
        self._pending = [e + self._epoch_offset for e in self.update_epochs]

    def update(self, state: TrainingState) -> None:
        super().update(state)
        while self._pending and state.epoch >= self._pending[0]:
            self._pending.pop(0)
            self.thin(state)

    def on_start(self, state: TrainingState) -> None:
        self.thin(state)

    def thin(self, state: TrainingState) -> None:
        """Remove pruned groups: the structured modifiers' own, else all-zero heads and neurons."""
        # modifiers whose masks hold until finalize know what they pruned; after leave_enabled:
        # false the pruned weights may have grown back, so only all-zero groups go
        structured = [
            m
            for m in state.extras.get(STRUCTURED_MODIFIERS, [])
            if m.started and m.leaves_masks_enabled
        ]
        for mod in structured:
            mod.compact_now(state, remove_layers=True)
        if not structured:
            model = state.model
            groups = find_encoder_groups(model, owner=self.name)
            kept, heads, neurons = zeroed_groups(model, groups)
            for layer in groups.layers:  # an all-zero layer is left whole: thinning removes groups
                if layer.index not in kept:
                    heads[layer.index] = list(range(groups.heads(model, layer)))
                    neurons[layer.index] = torch.arange(groups.neurons(model, layer))
            every = [layer.index for layer in groups.layers]
            compact_model(model, every, heads, neurons, optimizer=state.optimizer, groups=groups)
        self._thinned_at = state.epoch

    def on_finalize(self, state: TrainingState) -> None:
        if self._thinned_at == float("-inf"):
            self.thin(state)

    def apply_structure(self, model: torch.nn.Module) -> None:
        """The thinned shapes are in the saved config.json (see GroupPruningModifier)."""
        from sparseforge.modifiers.pruning.compaction import apply_compaction_plan, plan_of

        plan = plan_of(model)
        if plan is not None:
            apply_compaction_plan(model, plan)
