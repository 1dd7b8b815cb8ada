"""`GroupPruningModifier`: gradual structured pruning of heads, FFN neurons and layers, then removal.

    - !GroupPruningModifier
        start_epoch: 0.0
        end_epoch: 3.0
        update_frequency: 0.25
        init_sparsity: 0.0
        final_sparsity: {heads: 0.5, neurons: 0.75, layers: 0.0}
        score: first_order          # or magnitude, movement
        inter_func: cubic

The groups are found from the model (`groups.py`), scored (`group_scores.py`), ranked globally
across layers with a minimum kept per layer (`group_masks.py`), and enforced as masks through the
shared pruning base: zeroed weight rows/columns and bias entries, zeroed gradients and optimizer
moments; a pruned layer is bypassed in forward (its block returns its input). At `end_epoch` the
pruned heads and neurons are physically removed (`compaction.py`: smaller Linear layers, the
optimizer follows), so any training after it (fine-tuning, QAT, unstructured pruning of what is
left) runs on the smaller model; pruned layers leave the encoder at `finalize`.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, PrivateAttr, field_validator, model_validator

from sparseforge.errors import ModelMatchError
from sparseforge.modifiers.base import TrainingState, register
from sparseforge.modifiers.pruning.base import PruningModifier
from sparseforge.modifiers.pruning.compaction import (
    apply_compaction_plan,
    compact_model,
    plan_of,
)
from sparseforge.modifiers.pruning.group_masks import prunable_count, select_groups, target_count
from sparseforge.modifiers.pruning.group_scores import (
    SCORES,
    STRUCTURES,
    GradientScoreAccumulator,
    GroupScores,
    magnitude_scores,
)
from sparseforge.modifiers.pruning.groups import EncoderGroups, find_encoder_groups
from sparseforge.modifiers.pruning.schedule import check_inter_func, interpolate

logger = logging.getLogger(__name__)

Targets = dict[str, float]
# state.extras key: the structured pruning modifiers of the run (LayerThinningModifier compacts them)
STRUCTURED_MODIFIERS = "pruning/structured_modifiers"


def _as_targets(value: float | dict[str, float], field: str) -> Targets:
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(STRUCTURES))
        if unknown:
            raise ValueError(
                f"{field}: unknown structure {unknown[0]!r}; valid: {', '.join(STRUCTURES)}"
            )
        targets = {key: float(v) for key, v in value.items()}
    else:
        targets = {"heads": float(value), "neurons": float(value)}
    for key, target in targets.items():
        if not 0.0 <= target < 1.0:
            raise ValueError(
                f"{field}: {key} sparsity must be within [0, 1), got {target:g} "
                f"(1.0 would remove every {key[:-1]}; a minimum is kept per layer)"
            )
    return targets


@register
class GroupPruningModifier(PruningModifier):
    """Gradual structured pruning of attention heads, FFN neurons and encoder layers with
    physical removal (see the module docstring)."""

    # SparseML's StructuredPruningModifier names parameters; ours finds every group itself
    params_define_groups: ClassVar[bool] = False
    init_sparsity: float | dict[str, float] = 0.0
    final_sparsity: float | dict[str, float]
    inter_func: Literal["linear", "cubic", "inverse_cubic"] = "cubic"
    score: Literal["magnitude", "first_order", "movement"] = "first_order"
    min_heads_per_layer: int = Field(default=1, ge=1)
    min_neurons_per_layer: int = Field(default=16, ge=1)
    min_layers: int = Field(default=1, ge=1)
    compact: bool = True
    # heads and neurons ranked over all (kept) layers at once, so layers end uneven (True), or
    # every kept layer pruned to the target apart, so they end alike (False; SparseML's way)
    global_sparsity: bool = True

    _groups: EncoderGroups | None = PrivateAttr(default=None)
    _group_keep: dict[str, list[torch.Tensor]] = PrivateAttr(default_factory=dict)
    _accumulator: GradientScoreAccumulator | None = PrivateAttr(default=None)
    _hooks: dict[int, Any] = PrivateAttr(default_factory=dict)
    _start_pending: bool = PrivateAttr(default=False)
    _compacted_groups: bool = PrivateAttr(default=False)
    _layers_removed: bool = PrivateAttr(default=False)
    # structure -> layer indices it may prune (None: every layer)
    _layer_filter: dict[str, set[int]] | None = PrivateAttr(default=None)

    @field_validator("score", mode="before")
    @classmethod
    def _check_score(cls, value: Any) -> Any:
        if value not in SCORES:
            raise ValueError(f"unknown score {value!r}; valid: {', '.join(SCORES)}")
        return value

    @field_validator("inter_func", mode="before")
    @classmethod
    def _check_inter_func(cls, value: Any) -> Any:
        return check_inter_func(value)

    @model_validator(mode="after")
    def _check_targets(self) -> GroupPruningModifier:
        if self.params and not type(self).params_define_groups:
            raise ValueError(
                f"{type(self).__name__} finds its groups (heads, neurons, layers) from the model: "
                "leave params out and set final_sparsity per structure"
            )
        finals = _as_targets(self.final_sparsity, "final_sparsity")
        inits = _as_targets(self.init_sparsity, "init_sparsity")
        extra = sorted(set(inits) - set(finals)) if isinstance(self.init_sparsity, dict) else []
        if extra:
            raise ValueError(
                f"init_sparsity names {extra[0]!r}, which final_sparsity does not prune"
            )
        if self.end_epoch == -1 and self.end_step is None:
            raise ValueError("end_epoch is required: the epoch at which final_sparsity is reached")
        return self

    # ----- targets -----------------------------------------------------------------------------
    @property
    def final_targets(self) -> Targets:
        targets = _as_targets(self.final_sparsity, "final_sparsity")
        if self._layer_filter is not None:
            targets = {k: v for k, v in targets.items() if k in self._layer_filter}
        return targets

    def targets_at(self, epoch: float, starting: bool = False) -> Targets:
        """Sparsity per structure at `epoch`: init at the start update, final from `end_epoch` on."""
        inits = _as_targets(self.init_sparsity, "init_sparsity")
        start, end = max(self.scheduled_start, 0.0), self.scheduled_end
        targets = {}
        for key, final in self.final_targets.items():
            init = inits.get(key, 0.0)
            if epoch >= end:
                targets[key] = final
            elif starting:
                targets[key] = init
            else:
                targets[key] = interpolate(epoch, start, end, init, final, self.inter_func)
        return targets

    def _min_keep(self, structure: str) -> int:
        return {
            "heads": self.min_heads_per_layer,
            "neurons": self.min_neurons_per_layer,
            "layers": self.min_layers,
        }[structure]

    def _sizes(self, structure: str) -> list[int]:
        assert self._groups is not None and self._state is not None
        model, groups = self._state.model, self._groups
        if structure == "layers":
            return [len(groups.layers)]
        count = groups.heads if structure == "heads" else groups.neurons
        allowed = self._layer_filter.get(structure) if self._layer_filter else None
        return [
            count(model, layer)
            for layer in groups.layers
            if allowed is None or layer.index in allowed
        ]

    # ----- lifecycle -------------------------------------------------------------------------
    def on_initialize(self, state: TrainingState) -> None:
        self._state = state
        self._groups = groups = find_encoder_groups(state.model, owner=self.name)
        if groups.shared_head_table and self.final_targets.get("heads", 0.0) > 0:
            raise ModelMatchError(
                f"{self.name}: final_sparsity for heads cannot apply to this model: "
                f"{groups.shared_head_table} holds a bias per head shared by every layer (MPNet's "
                "relative attention), so heads cannot be removed layer by layer; prune neurons and layers"
            )
        self.select_groups_from_params(state.model, groups)
        for structure, final in self.final_targets.items():
            sizes = self._sizes(structure)
            min_keep = self._min_keep(structure)
            wanted = round(final * sum(sizes))
            if wanted > prunable_count(sizes, min_keep):
                most = prunable_count(sizes, min_keep) / max(sum(sizes), 1)
                raise ModelMatchError(
                    f"{self.name}: final_sparsity {final:g} for {structure} would prune {wanted} of "
                    f"{sum(sizes)}, but at least {min_keep} per {'model' if structure == 'layers' else 'layer'} "
                    f"must stay; the most this model allows is {most:.4g}"
                )
        names = []
        for layer in groups.layers:
            for module in (layer.q, layer.k, layer.v, layer.o, layer.ffn_in, layer.ffn_out):
                names.extend(
                    f"{module}.{p}" for p, _ in state.model.get_submodule(module).named_parameters()
                )
        self._param_names = names
        self.refresh_params(state)
        if self.score != "magnitude":
            self._accumulator = GradientScoreAccumulator(self.score)
        state.extras.setdefault(STRUCTURED_MODIFIERS, []).append(self)

    def select_groups_from_params(self, model: torch.nn.Module, groups: EncoderGroups) -> None:
        """Restrict the structures and layers pruned (SparseML's `params`); here: all of them."""

    def on_start(self, state: TrainingState) -> None:
        self._start_pending = True

    def optimizer_pre_step(self, state: TrainingState) -> None:
        if self._accumulator is not None and not self.ended and self._groups is not None:
            self._accumulator.accumulate(state.model, self._groups)
        super().optimizer_pre_step(state)

    def group_scores(self, state: TrainingState) -> GroupScores:
        assert self._groups is not None
        if self._accumulator is None:
            return magnitude_scores(state.model, self._groups)
        return self._accumulator.scores(state.model, self._groups)

    def on_update(self, state: TrainingState) -> None:
        targets = self.targets_at(state.epoch, starting=self._start_pending)
        self._start_pending = False
        self.prune_to(state, targets)

    @torch.no_grad()
    def prune_to(self, state: TrainingState, targets: Targets) -> dict[str, list[torch.Tensor]]:
        """Score, select the groups to keep at `targets`, install the masks; returns the keeps."""
        self.refresh_params(state)
        scores = self.group_scores(state)
        keeps: dict[str, list[torch.Tensor]] = {}
        if "layers" in targets:  # layers first: heads and neurons are counted over the live layers
            count = target_count(targets["layers"], self._sizes("layers"), self.min_layers)
            keeps["layers"] = select_groups(
                scores["layers"], count, self.min_layers, self._group_keep.get("layers")
            )
        live = (
            keeps["layers"][0]
            if "layers" in keeps
            else torch.ones(len(scores["heads"]), dtype=torch.bool)
        )
        for structure in ("heads", "neurons"):
            if structure in targets:
                keeps[structure] = self._select(
                    structure, targets[structure], scores[structure], live
                )
        self._group_keep = keeps
        self._targets = dict(targets)
        self.set_masks(state, self._param_masks(state))
        self._set_layer_bypass(state.model)
        self._log(state)
        return keeps

    def _select(
        self, structure: str, target: float, scores: list[torch.Tensor], live: torch.Tensor
    ) -> list[torch.Tensor]:
        """Keep masks of one structure: over the live (and selected) layers, globally or per layer."""
        allowed = self._layer_filter.get(structure) if self._layer_filter else None
        index = [
            i
            for i, alive in enumerate(live.tolist())
            if alive and (allowed is None or i in allowed)
        ]
        previous = self._group_keep.get(structure)
        min_keep = self._min_keep(structure)
        batches = [index] if self.global_sparsity else [[i] for i in index]
        full = [torch.ones(v.numel(), dtype=torch.bool) for v in scores]
        for part in batches:
            count = target_count(target, [scores[i].numel() for i in part], min_keep)
            chosen = select_groups(
                [scores[i] for i in part],
                count,
                min_keep,
                [previous[i] for i in part] if previous else None,
            )
            for i, keep in zip(part, chosen, strict=True):
                full[i] = keep
        return full

    def _param_masks(self, state: TrainingState) -> dict[str, torch.Tensor]:
        """Expand the group keeps into one keep mask per parameter (True = keep)."""
        assert self._groups is not None
        masks: dict[str, torch.Tensor] = {}
        layer_keep = self._layer_keep()
        for layer in self._groups.layers:
            heads = self._group_keep["heads"][layer.index] if "heads" in self._group_keep else None
            neurons = (
                self._group_keep["neurons"][layer.index] if "neurons" in self._group_keep else None
            )
            rows = heads.repeat_interleave(layer.head_size) if heads is not None else None
            # (module role, keep along outputs, keep along inputs)
            plan = {
                "q": (rows, None),
                "k": (rows, None),
                "v": (rows, None),
                "o": (None, rows),
                "ffn_in": (neurons, None),
                "ffn_out": (None, neurons),
            }
            for role, (out_keep, in_keep) in plan.items():
                module = state.model.get_submodule(getattr(layer, role))
                for pname, param in module.named_parameters():
                    mask = torch.ones(param.shape, dtype=torch.bool)
                    if not bool(layer_keep[layer.index]):
                        mask.zero_()
                    elif out_keep is not None:
                        mask &= out_keep.reshape(-1, *([1] * (param.dim() - 1)))
                    elif in_keep is not None and param.dim() == 2:
                        mask &= in_keep.reshape(1, -1)
                    masks[f"{getattr(layer, role)}.{pname}"] = mask
        return masks

    def _layer_keep(self) -> torch.Tensor:
        assert self._groups is not None
        keeps = self._group_keep.get("layers")
        return keeps[0] if keeps else torch.ones(len(self._groups.layers), dtype=torch.bool)

    # ----- layers: bypassed in forward while masked, removed at finalize ------------------------
    def _set_layer_bypass(self, model: torch.nn.Module) -> None:
        assert self._groups is not None
        container = model.get_submodule(self._groups.layers_path)
        for index, keep in enumerate(self._layer_keep().tolist()):
            if not keep and index not in self._hooks:
                self._hooks[index] = container[index].register_forward_hook(
                    _bypass, with_kwargs=True
                )

    def _remove_hooks(self) -> None:
        for handle in self._hooks.values():
            handle.remove()
        self._hooks = {}

    # ----- compaction ----------------------------------------------------------------------------
    def compact_now(self, state: TrainingState, remove_layers: bool) -> None:
        """Physically remove pruned heads and neurons (and pruned layers if `remove_layers`)."""
        groups = self._groups
        assert groups is not None
        model = state.model
        layer_keep = self._layer_keep()
        n = len(groups.layers)
        heads = self._group_keep.get("heads") or [
            torch.ones(groups.heads(model, layer), dtype=torch.bool) for layer in groups.layers
        ]
        neurons = self._group_keep.get("neurons") or [
            torch.ones(groups.neurons(model, layer), dtype=torch.bool) for layer in groups.layers
        ]
        keep_heads, keep_neurons = [], []
        for i, layer in enumerate(groups.layers):
            full = not bool(layer_keep[i])  # a bypassed layer keeps its shapes until it leaves
            keep_heads.append(
                list(range(groups.heads(model, layer)))
                if full
                else torch.nonzero(heads[i]).flatten().tolist()
            )
            keep_neurons.append(
                torch.arange(groups.neurons(model, layer))
                if full
                else torch.nonzero(neurons[i]).flatten()
            )
        keep_layers = (
            [i for i in range(n) if bool(layer_keep[i])] if remove_layers else list(range(n))
        )
        if remove_layers:
            self._remove_hooks()
        compact_model(
            model, keep_layers, keep_heads, keep_neurons, optimizer=state.optimizer, groups=groups
        )
        self._groups = find_encoder_groups(model, owner=self.name)
        self._group_keep = {}
        # only the bypassed layers' masks remain (their shapes did not change)
        bypassed = (
            {groups.layers[i].name for i in range(n) if not bool(layer_keep[i])}
            if not remove_layers
            else set()
        )
        self._masks = {
            k: v for k, v in self._masks.items() if any(k.startswith(b + ".") for b in bypassed)
        }
        self._keep = {k: v for k, v in self._keep.items() if k in self._masks}
        self._param_names = list(self._masks)
        if bypassed:
            self._group_keep = {"layers": [layer_keep.clone()]}
        self._enforcing = bool(self._masks)
        self.refresh_params(state)
        self._compacted_groups = True
        self._layers_removed = remove_layers

    @property
    def leaves_masks_enabled(self) -> bool:
        return bool(getattr(self, "leave_enabled", True))

    def on_end(self, state: TrainingState) -> None:
        if self.compact:
            self.compact_now(state, remove_layers=False)
            state.logs.update(_structure_logs(state.model, self._groups))
        else:
            super().on_end(state)

    def on_finalize(self, state: TrainingState) -> None:
        if self.compact and self.started and not self._layers_removed and self._groups is not None:
            self.compact_now(state, remove_layers=True)
        elif self._enforcing:
            self.apply_masks(state)
        self._remove_hooks()
        self._enforcing = False
        self._masks, self._keep = {}, {}

    def apply_structure(self, model: torch.nn.Module) -> None:
        """Rebuild the compacted shapes recorded in `model.config` (a saved model's config.json)."""
        plan = plan_of(model)
        if plan is not None:
            apply_compaction_plan(model, plan)

    # ----- reporting ---------------------------------------------------------------------------
    def _log(self, state: TrainingState) -> None:
        super()._log(state)
        live = self._layer_keep().tolist() if self._groups is not None else []
        for structure, keeps in self._group_keep.items():
            if structure != "layers":  # heads and neurons of the live layers
                keeps = [k for k, alive in zip(keeps, live, strict=True) if alive]
            kept = sum(int(k.sum()) for k in keeps)
            total = sum(k.numel() for k in keeps)
            state.logs[f"structured/{structure}_kept"] = float(kept)
            state.logs[f"structured/{structure}_sparsity"] = 1 - kept / max(total, 1)

    def group_keep(self) -> dict[str, list[torch.Tensor]]:
        """Current keep masks per structure (per layer; layers as one tensor)."""
        return {k: [t.clone() for t in v] for k, v in self._group_keep.items()}

    def schedule_values(self, epoch: float) -> dict[str, float]:
        start = max(self.scheduled_start, 0.0)
        if epoch < start:
            return {}
        return {f"sparsity[{k}]": v for k, v in self.targets_at(epoch).items()}

    def schedule_events(self) -> list[tuple[float, str]]:
        finals = ", ".join(f"{k} {v:g}" for k, v in self.final_targets.items())
        end = "; pruned heads and neurons removed" if self.compact else ""
        return [
            (
                max(self.scheduled_start, 0.0),
                f"{self.name} starts: {finals} ({self.score} scores, {self.inter_func})",
            ),
            (self.scheduled_end, f"{self.name} reaches {finals}{end}"),
        ]

    # ----- checkpointing ----------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        extra = super().extra_state()
        extra["group_keep"] = {k: [t.clone() for t in v] for k, v in self._group_keep.items()}
        extra["compacted"] = self._compacted_groups
        if self._accumulator is not None:
            extra["scores"] = self._accumulator.state_dict()
        return extra

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if state.get("compacted"):
            raise ModelMatchError(
                f"{self.name}: the run was saved after compaction; load that checkpoint with "
                "sparseforge's load_model (its config.json records the smaller shapes) instead of resuming"
            )
        super().load_extra_state(state)
        self._group_keep = {
            k: [torch.as_tensor(t, dtype=torch.bool) for t in v]
            for k, v in state.get("group_keep", {}).items()
        }
        if self._accumulator is not None and "scores" in state:
            self._accumulator.load_state_dict(state["scores"])
        if self._state is not None and self._groups is not None:
            self._set_layer_bypass(self._state.model)


def _bypass(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
    """Forward hook of a pruned layer: the block passes its input hidden states through."""
    hidden = args[0] if args else kwargs.get("hidden_states")
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    return hidden


def _structure_logs(model: torch.nn.Module, groups: EncoderGroups | None) -> dict[str, float]:
    if groups is None:
        return {}
    return {
        "structured/heads_total": float(sum(groups.heads(model, layer) for layer in groups.layers)),
        "structured/neurons_total": float(
            sum(groups.neurons(model, layer) for layer in groups.layers)
        ),
    }
