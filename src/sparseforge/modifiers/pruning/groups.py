"""Structural groups of a BERT-class encoder, found from the model itself (no module names assumed).

An encoder is a `torch.nn.ModuleList` of blocks; each block has six Linear layers registered in
the order query, key, value, attention output (BERT `query/key/value` +
`attention.output.dense`, RoBERTa the same, DistilBERT `q_lin/k_lin/v_lin/out_lin`, MPNet
`attn.q/k/v/o`), then a feed-forward pair `hidden -> intermediate` and `intermediate -> hidden`
(BERT `intermediate.dense` / `output.dense`, DistilBERT `ffn.lin1/lin2`). Roles are read from
shapes and registration order, then checked against the usual names when the names say anything.

The groups (what structured pruning removes whole):
- a head: rows `h*d:(h+1)*d` of Q, K, V (weights and biases) and the same columns of the output;
- a neuron: one row of the intermediate Linear (and its bias) and that column of the output Linear;
- a layer: the whole block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sparseforge.errors import ModelMatchError

# Name hints (last name component) that confirm a role when the model uses a known spelling.
_ROLE_HINTS = {
    "q": {"query", "q_lin", "q", "q_proj"},
    "k": {"key", "k_lin", "k", "k_proj"},
    "v": {"value", "v_lin", "v", "v_proj"},
}
_HEAD_COUNT_ATTRS = ("num_attention_heads", "n_heads", "num_heads")


@dataclass
class LayerGroups:
    """The modules of one encoder block that hold its heads and neurons (names relative to the model)."""

    index: int
    name: str
    q: str
    k: str
    v: str
    o: str
    ffn_in: str
    ffn_out: str
    attention: str  # the module that holds q/k/v (and the head-count attributes)
    num_heads: int
    head_size: int


@dataclass
class EncoderGroups:
    """Every encoder block of a model with its groups; `layers_path` names the ModuleList."""

    layers_path: str
    hidden_size: int
    layers: list[LayerGroups]
    # a per-head table shared by every layer (MPNet's relative position bias): heads cannot be
    # removed layer by layer from such a model
    shared_head_table: str | None = None

    def heads(self, model: torch.nn.Module, layer: LayerGroups) -> int:
        """Current number of heads of `layer` (from the query Linear's size)."""
        return model.get_submodule(layer.q).out_features // layer.head_size

    def neurons(self, model: torch.nn.Module, layer: LayerGroups) -> int:
        return model.get_submodule(layer.ffn_in).out_features

    def weight_names(self, layer: LayerGroups) -> list[str]:
        return [
            f"{n}.weight" for n in (layer.q, layer.k, layer.v, layer.o, layer.ffn_in, layer.ffn_out)
        ]


def model_config(model: torch.nn.Module) -> Any:
    """The model's configuration object, if it has one (duck-typed: no transformers import)."""
    return getattr(model, "config", None)


def _config_int(config: Any, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _linears(block: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    return [(name, mod) for name, mod in block.named_modules() if isinstance(mod, torch.nn.Linear)]


def _parse_block(
    prefix: str, index: int, block: torch.nn.Module, hidden: int, num_heads: int | None
) -> LayerGroups | str:
    """The groups of one block, or a sentence saying why it is not an encoder block.

    In registration order a block holds q, k, v (`hidden -> A`, one parent module), the
    attention output (`A -> hidden`), then the FFN pair (`hidden -> I`, `I -> hidden`); A and I
    shrink when the block is compacted, so only `hidden` is known in advance.
    """
    linears = _linears(block)
    if len(linears) != 6:
        return f"expected 6 Linear layers (q, k, v, attention output, FFN in, FFN out), found {len(linears)}"
    (q, qm), (k, km), (v, vm), (o, om), (fi, fim), (fo, fom) = linears
    width = qm.out_features
    if any(m.in_features != hidden or m.out_features != width for m in (qm, km, vm)):
        return f"the first three Linear layers are not q, k, v of input size {hidden} and one output size"
    if om.in_features != width or om.out_features != hidden:
        return f"the fourth Linear layer is not the attention output ({width} -> {hidden})"
    if (
        fim.in_features != hidden
        or fom.out_features != hidden
        or fim.out_features != fom.in_features
    ):
        return f"the last two Linear layers are not an FFN pair ({hidden} -> I -> {hidden})"
    for role, name in (("q", q), ("k", k), ("v", v)):
        last = name.rsplit(".", 1)[-1].lower()
        known = set().union(*_ROLE_HINTS.values())
        if last in known and last not in _ROLE_HINTS[role]:
            return f"Linear '{name}' is registered where the {role} projection is expected"
    attention = q.rpartition(".")[0]
    if k.rpartition(".")[0] != attention or v.rpartition(".")[0] != attention:
        return "q, k and v are not in the same module"
    attn_module = block.get_submodule(attention) if attention else block
    head_size = _config_int(attn_module, "attention_head_size", "head_dim", "dim_per_head")
    if head_size is None and num_heads and hidden % num_heads == 0:
        head_size = hidden // num_heads
    if not head_size or width % head_size:
        return f"cannot tell the head size (attention width {width}, heads {num_heads})"
    full = lambda n: f"{prefix}.{n}" if n else prefix  # noqa: E731
    return LayerGroups(
        index=index,
        name=prefix,
        q=full(q),
        k=full(k),
        v=full(v),
        o=full(o),
        ffn_in=full(fi),
        ffn_out=full(fo),
        attention=full(attention),
        num_heads=width // head_size,
        head_size=head_size,
    )


def find_encoder_groups(model: torch.nn.Module, owner: str = "structured pruning") -> EncoderGroups:
    """The encoder blocks of `model` and their head / neuron / layer groups.

    Uses `model.config` (`hidden_size` or `dim`, `num_attention_heads` or `n_heads`) when present
    and the modules' shapes otherwise; ModelMatchError naming what was looked for if no
    ModuleList of encoder blocks is found.
    """
    config = model_config(model)
    hidden = _config_int(config, "hidden_size", "dim", "d_model")
    num_heads = _config_int(config, "num_attention_heads", "n_heads", "num_heads")
    reasons: list[str] = []
    for path, container in model.named_modules():
        if not isinstance(container, torch.nn.ModuleList) or len(container) == 0:
            continue
        block_hidden = hidden or _guess_hidden(container[0])
        if block_hidden is None:
            continue
        parsed = [
            _parse_block(f"{path}.{i}", i, block, block_hidden, num_heads)
            for i, block in enumerate(container)
        ]
        if all(isinstance(p, LayerGroups) for p in parsed):
            table = _shared_head_table(model, path, parsed[0].num_heads)  # type: ignore[union-attr]
            return EncoderGroups(path, block_hidden, parsed, table)  # type: ignore[arg-type]
        reasons.append(f"{path}: {next(p for p in parsed if isinstance(p, str))}")
    detail = "; ".join(reasons[:3]) or "the model has no ModuleList of blocks"
    raise ModelMatchError(
        f"{owner}: found no BERT-class encoder layers (a ModuleList of blocks, each with q, k, v and "
        f"output Linear layers of the hidden size and an FFN pair) in {type(model).__name__}: {detail}"
    )


def _shared_head_table(model: torch.nn.Module, layers_path: str, num_heads: int) -> str | None:
    """An Embedding beside the layers with one column per head (a bias shared by all layers)."""
    parent_path = layers_path.rpartition(".")[0]
    parent = model.get_submodule(parent_path) if parent_path else model
    for name, child in parent.named_children():
        if isinstance(child, torch.nn.Embedding) and child.embedding_dim == num_heads:
            return f"{parent_path}.{name}" if parent_path else name
    return None


def _guess_hidden(block: torch.nn.Module) -> int | None:
    linears = _linears(block)
    return linears[0][1].in_features if linears else None


def head_rows(head_indices: torch.Tensor | list[int], head_size: int) -> torch.Tensor:
    """Indices of the Q/K/V rows (and output columns) of the given heads, in order."""
    heads = torch.as_tensor(head_indices, dtype=torch.long).reshape(-1, 1)
    return (heads * head_size + torch.arange(head_size).reshape(1, -1)).reshape(-1)
