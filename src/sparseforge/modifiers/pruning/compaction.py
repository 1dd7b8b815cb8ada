"""Compaction: pruned heads, FFN neurons and layers physically removed from an encoder.

Each Linear that loses rows or columns is replaced by a new `torch.nn.Linear` holding the kept
slice, so the model is smaller and faster in any runtime (PyTorch, ONNX Runtime). A head goes
from Q, K, V (rows) and the attention output (columns), and the attention module's head count
attributes (`num_attention_heads` / `n_heads`, `all_head_size`) follow, as transformers 5.x
attention reads them; a neuron goes from the intermediate Linear (row) and the output Linear
(column); a layer leaves the encoder's ModuleList.

What was removed is recorded as a *plan*, a small JSON-able dict stored in the model's config
(`config.sparseforge_structure`, hence in `config.json`), so that a saved model is rebuilt from
its config before a strict load (`apply_compaction_plan`). Where only neurons and whole layers go,
the same number in every layer, the config's own `intermediate_size` and `num_hidden_layers`
describe the model and plain transformers loads it.

transformers 5.x no longer has `prune_heads` / `find_pruneable_heads_and_indices` (only
`pytorch_utils.prune_linear_layer` remains), and its attention modules read the head count from
the Q/K/V output size, so per-layer head counts need nothing beyond the sliced Linear layers and
the head-count attributes set here; modifiers do not import transformers in any case.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from sparseforge.errors import ModelMatchError
from sparseforge.modifiers.pruning.groups import (
    _HEAD_COUNT_ATTRS,
    EncoderGroups,
    LayerGroups,
    find_encoder_groups,
    head_rows,
    model_config,
)

logger = logging.getLogger(__name__)

PLAN_KEY = "sparseforge_structure"
PLAN_VERSION = 1
# config fields for the layer count and FFN width, by model family (BERT/RoBERTa/MPNet, DistilBERT)
_LAYER_COUNT_FIELDS = ("num_hidden_layers", "n_layers")
_FFN_WIDTH_FIELDS = ("intermediate_size", "hidden_dim")

# old parameter -> (new parameter, dim sliced, kept indices), for moving optimizer state along
ParamMoves = dict[int, tuple[torch.nn.Parameter, torch.nn.Parameter, int, torch.Tensor]]


def _set_module(model: torch.nn.Module, name: str, new: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


@torch.no_grad()
def slice_linear(
    model: torch.nn.Module,
    name: str,
    index: torch.Tensor,
    dim: int,
    moves: ParamMoves | None = None,
) -> torch.nn.Linear:
    """Replace Linear `name` by one keeping `index` along `dim` (0 = outputs, 1 = inputs)."""
    old = model.get_submodule(name)
    if type(old) is not torch.nn.Linear:
        raise ModelMatchError(
            f"compaction: {name} is a {type(old).__name__}, not a plain torch.nn.Linear; compact "
            "before quantization-aware training starts (QAT then wraps the smaller layers)"
        )
    index = index.to(device=old.weight.device, dtype=torch.long)
    weight = old.weight.index_select(dim, index)
    bias = old.bias
    if bias is not None and dim == 0:
        bias = bias.index_select(0, index)
    new = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    new = new.to(device=weight.device, dtype=weight.dtype)
    new.weight.copy_(weight)
    new.weight.requires_grad_(old.weight.requires_grad)
    if bias is not None:
        new.bias.copy_(bias)
        new.bias.requires_grad_(old.bias.requires_grad)
    new.train(old.training)
    _set_module(model, name, new)
    if moves is not None:
        moves[id(old.weight)] = (old.weight, new.weight, dim, index)
        if old.bias is not None:
            bias_index = index if dim == 0 else torch.arange(old.bias.shape[0], device=index.device)
            moves[id(old.bias)] = (old.bias, new.bias, 0, bias_index)
    return new


def prune_heads(
    model: torch.nn.Module, layer: LayerGroups, keep: Sequence[int], moves: ParamMoves | None = None
) -> None:
    """Keep only heads `keep` (indices among the layer's current heads) of `layer`."""
    if not keep:
        raise ModelMatchError(f"compaction: {layer.name} would keep no attention head")
    rows = head_rows(sorted(keep), layer.head_size)
    for name in (layer.q, layer.k, layer.v):
        slice_linear(model, name, rows, 0, moves)
    slice_linear(model, layer.o, rows, 1, moves)
    attention = model.get_submodule(layer.attention)
    for attr in _HEAD_COUNT_ATTRS:
        if isinstance(getattr(attention, attr, None), int):
            setattr(attention, attr, len(keep))
    if isinstance(getattr(attention, "all_head_size", None), int):
        attention.all_head_size = len(keep) * layer.head_size


def prune_neurons(
    model: torch.nn.Module, layer: LayerGroups, keep: torch.Tensor, moves: ParamMoves | None = None
) -> None:
    """Keep only FFN neurons `keep` (indices) of `layer`."""
    if keep.numel() == 0:
        raise ModelMatchError(f"compaction: {layer.name} would keep no FFN neuron")
    keep = torch.sort(keep.to(torch.long)).values
    slice_linear(model, layer.ffn_in, keep, 0, moves)
    slice_linear(model, layer.ffn_out, keep, 1, moves)


def remove_layers(
    model: torch.nn.Module, groups: EncoderGroups, keep: Sequence[int]
) -> EncoderGroups:
    """Drop every encoder block not in `keep` (current indices); returns the renumbered groups."""
    container = model.get_submodule(groups.layers_path)
    keep = sorted(set(keep))
    if not keep:
        raise ModelMatchError("compaction: every encoder layer would be removed")
    if len(keep) == len(container):
        return groups
    _set_module(model, groups.layers_path, torch.nn.ModuleList([container[i] for i in keep]))
    _set_config(model, _LAYER_COUNT_FIELDS, len(keep))
    return find_encoder_groups(model)


def _set_config(model: torch.nn.Module, fields: Sequence[str], value: int) -> None:
    config = model_config(model)
    for field in fields:
        if config is not None and isinstance(getattr(config, field, None), int):
            setattr(config, field, value)


@torch.no_grad()
def move_optimizer_state(optimizer: torch.optim.Optimizer | None, moves: ParamMoves) -> None:
    """Point the optimizer at the new (sliced) parameters and slice their state the same way."""
    if optimizer is None or not moves:
        return
    for group in optimizer.param_groups:
        group["params"] = [moves[id(p)][1] if id(p) in moves else p for p in group["params"]]
    for old, new, dim, index in list(moves.values()):
        state = optimizer.state.pop(old, None)
        if state is None:
            continue
        moved = {}
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.shape == old.shape:
                value = value.index_select(dim, index.to(value.device))
            moved[key] = value
        optimizer.state[new] = moved


def current_plan(
    model: torch.nn.Module,
    groups: EncoderGroups,
    dense: Mapping[str, int],
    kept_layers: Sequence[int],
    heads: Sequence[Sequence[int]],
) -> dict[str, Any]:
    """The plan describing `model` as it is now: kept layers, heads per layer, neurons per layer."""
    return {
        "version": PLAN_VERSION,
        "layers_path": groups.layers_path,
        "dense": dict(dense),
        "kept_layers": [int(i) for i in kept_layers],
        "heads": [sorted(int(h) for h in layer_heads) for layer_heads in heads],
        "neurons": [groups.neurons(model, layer) for layer in groups.layers],
    }


def dense_shape(model: torch.nn.Module, groups: EncoderGroups) -> dict[str, int]:
    """The sizes of the uncompacted encoder (what analyze compares against)."""
    first = groups.layers[0]
    return {
        "num_layers": len(groups.layers),
        "num_heads": first.num_heads,
        "head_size": first.head_size,
        "hidden_size": groups.hidden_size,
        "intermediate_size": groups.neurons(model, first),
    }


def record_plan(model: torch.nn.Module, plan: Mapping[str, Any]) -> None:
    """Write the plan into the model's config, and the standard size fields where uniform."""
    config = model_config(model)
    if config is None:
        return
    neurons = set(plan["neurons"])
    if len(neurons) == 1:
        _set_config(model, _FFN_WIDTH_FIELDS, next(iter(neurons)))
    _set_config(model, _LAYER_COUNT_FIELDS, len(plan["kept_layers"]))
    # Kept even when the standard fields describe the model (plain transformers ignores it):
    # it is the record `sparseforge analyze` compares against the dense model.
    setattr(config, PLAN_KEY, dict(plan))


def plan_of(model: torch.nn.Module) -> dict[str, Any] | None:
    """The compaction plan recorded in `model.config`, if any."""
    plan = getattr(model_config(model), PLAN_KEY, None)
    return dict(plan) if isinstance(plan, Mapping) else None


def apply_compaction_plan(model: torch.nn.Module, plan: Mapping[str, Any]) -> None:
    """Give a freshly built `model` the shapes `plan` records, so a compacted checkpoint loads
    strictly into it (values come from the checkpoint). Idempotent: shapes already there stay."""
    groups = find_encoder_groups(model, owner="apply_compaction_plan")
    kept = [int(i) for i in plan["kept_layers"]]
    dense = plan["dense"]
    if len(groups.layers) != len(kept):
        if len(groups.layers) != dense["num_layers"]:
            raise ModelMatchError(
                f"apply_compaction_plan: the model has {len(groups.layers)} encoder layers; the plan "
                f"expects {len(kept)} (or {dense['num_layers']} before compaction)"
            )
        groups = remove_layers(model, groups, kept)
    for layer, heads, neurons in zip(groups.layers, plan["heads"], plan["neurons"], strict=True):
        have = groups.heads(model, layer)
        if have != len(heads):
            if have != dense["num_heads"]:
                raise ModelMatchError(
                    f"apply_compaction_plan: {layer.name} has {have} heads; the plan keeps {len(heads)} of {dense['num_heads']}"
                )
            prune_heads(model, layer, heads)
        have = groups.neurons(model, layer)
        if have != neurons:
            if have < neurons:
                raise ModelMatchError(
                    f"apply_compaction_plan: {layer.name} has {have} FFN neurons; the plan keeps {neurons}"
                )
            prune_neurons(model, layer, torch.arange(neurons))
    record_plan(model, plan)


@torch.no_grad()
def zeroed_groups(
    model: torch.nn.Module, groups: EncoderGroups
) -> tuple[list[int], list[list[int]], list[torch.Tensor]]:
    """Groups whose weights are all zero (a masked, uncompacted model): kept layers, and per
    layer the kept heads and kept neuron indices. A layer is removed when every one of its
    q/k/v/o/FFN weights is zero (how the structured pruning modifier leaves a masked layer)."""
    kept_layers, heads, neurons = [], [], []
    for layer in groups.layers:
        mods = {
            role: model.get_submodule(getattr(layer, role))
            for role in ("q", "k", "v", "o", "ffn_in", "ffn_out")
        }
        if all(not bool(m.weight.any()) for m in mods.values()):
            heads.append([])
            neurons.append(torch.empty(0, dtype=torch.long))
            continue
        kept_layers.append(layer.index)
        d = layer.head_size
        live = torch.zeros(groups.heads(model, layer), dtype=torch.bool)
        for role in ("q", "k", "v"):
            m = mods[role]
            rows = m.weight.reshape(-1, d, m.weight.shape[1]).ne(0).flatten(1).any(1)
            if m.bias is not None:
                rows |= m.bias.reshape(-1, d).ne(0).any(1)
            live |= rows.cpu()
        o = mods["o"].weight
        live |= o.reshape(o.shape[0], -1, d).ne(0).any(2).any(0).cpu()
        heads.append(torch.nonzero(live).flatten().tolist())
        ffn_in, ffn_out = mods["ffn_in"], mods["ffn_out"]
        alive = ffn_in.weight.ne(0).any(1) | ffn_out.weight.ne(0).any(0)
        if ffn_in.bias is not None:
            alive |= ffn_in.bias.ne(0)
        neurons.append(torch.nonzero(alive.cpu()).flatten())
    return kept_layers, heads, neurons


def compact_model(
    model: torch.nn.Module,
    keep_layers: Sequence[int],
    keep_heads: Sequence[Sequence[int]],
    keep_neurons: Sequence[torch.Tensor],
    optimizer: torch.optim.Optimizer | None = None,
    groups: EncoderGroups | None = None,
) -> dict[str, Any]:
    """Remove everything not kept (indices per current layer); returns and records the plan.

    `keep_heads[i]` / `keep_neurons[i]` are for layer i of the model as it is now (entries of
    removed layers are ignored). With `optimizer`, its parameters and state follow the slicing.
    """
    groups = groups or find_encoder_groups(model, owner="compaction")
    previous = plan_of(model)
    dense = previous["dense"] if previous else dense_shape(model, groups)
    origin = previous["kept_layers"] if previous else list(range(len(groups.layers)))
    head_origin = (
        previous["heads"] if previous else [list(range(layer.num_heads)) for layer in groups.layers]
    )
    moves: ParamMoves = {}
    for layer in groups.layers:
        if layer.index not in keep_layers:
            continue
        heads = sorted(int(h) for h in keep_heads[layer.index])
        if len(heads) != groups.heads(model, layer):
            _check_heads_removable(groups)
            prune_heads(model, layer, heads, moves)
            head_origin[layer.index] = [head_origin[layer.index][h] for h in heads]
        neurons = keep_neurons[layer.index]
        if neurons.numel() != groups.neurons(model, layer):
            prune_neurons(model, layer, neurons, moves)
    move_optimizer_state(optimizer, moves)
    kept = sorted(set(int(i) for i in keep_layers))
    groups = remove_layers(model, groups, kept)
    plan = current_plan(
        model, groups, dense, [origin[i] for i in kept], [head_origin[i] for i in kept]
    )
    record_plan(model, plan)
    logger.info(
        "compacted encoder: %d/%d layers, heads per layer %s, FFN neurons per layer %s",
        len(kept),
        dense["num_layers"],
        [len(h) for h in plan["heads"]],
        plan["neurons"],
    )
    return plan


def _check_heads_removable(groups: EncoderGroups) -> None:
    if groups.shared_head_table:
        raise ModelMatchError(
            f"compaction: heads cannot be removed layer by layer from this model: {groups.shared_head_table} "
            "holds a bias per head shared by every layer (MPNet's relative attention); prune neurons "
            "and layers only"
        )


def compact_zeroed(model: torch.nn.Module) -> dict[str, Any]:
    """Compact a masked model: remove the heads, neurons and layers whose weights are all zero."""
    groups = find_encoder_groups(model, owner="compaction")
    kept_layers, heads, neurons = zeroed_groups(model, groups)
    for layer in groups.layers:
        if layer.index in kept_layers and not heads[layer.index]:
            raise ModelMatchError(
                f"compaction: every head of {layer.name} is zero but the layer is not"
            )
        if layer.index in kept_layers and neurons[layer.index].numel() == 0:
            raise ModelMatchError(
                f"compaction: every FFN neuron of {layer.name} is zero but the layer is not"
            )
    return compact_model(model, kept_layers, heads, neurons, groups=groups)
