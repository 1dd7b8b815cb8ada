"""Measuring sparsity: per parameter, its structure (blocks, N:M), model totals, size on disk.

    sparseforge analyze MODEL_DIR_OR_CHECKPOINT [--json] [--all] [--sequence_length N]

reads a Hugging Face folder of safetensors (sharded or not), a single `.safetensors`, or a
`.bin` / `.pt` state dict (loaded with `weights_only=True`) without building the model class.
For a model folder whose config.json describes a BERT-class encoder, it also reports the
structure: attention heads, FFN neurons and layers kept per layer (a structurally pruned model
records them under `sparseforge_structure`) and the encoder's multiply-accumulates per token
against the dense model's. During training, `pruning_status(manager)` gives each pruned parameter's current target and
measured sparsity (the pruning modifiers also put `sparsity/<name>` scalars in `manager.logs()`).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from sparseforge.checkpoint import weight_files
from sparseforge.errors import SparseforgeError

# Below this fraction of zeros a tensor counts as dense (random init has a few exact zeros).
SPARSE_THRESHOLD = 0.05


def tensor_sparsity(tensor: torch.Tensor) -> float:
    """Fraction of exact zeros."""
    numel = tensor.numel()
    return float(numel - torch.count_nonzero(tensor)) / numel if numel else 0.0


def _rows_of_inputs(tensor: torch.Tensor) -> torch.Tensor:
    """(rows, inputs) view with the input dimension last (dim 1 of Linear/Conv weights)."""
    return tensor.movedim(1, -1).reshape(-1, tensor.shape[1])


def detect_structure(tensor: torch.Tensor) -> str:
    """The sparsity pattern of a tensor: 'dense', '[1,4] blocks', 'N:M' (e.g. '2:4') or
    'unstructured'. Blocks are 4 consecutive inputs of one output row, all zero or none."""
    zeros = tensor == 0
    if not bool(zeros.any()):
        return "dense"
    if tensor.dim() < 2 or tensor.shape[1] % 4:
        return "unstructured"
    groups = _rows_of_inputs(zeros).reshape(-1, 4)
    per_group = groups.sum(dim=1)
    if bool(((per_group == 0) | (per_group == 4)).all()):
        return "[1,4] blocks"
    for n, m in ((2, 4), (1, 4)):
        if tensor.shape[1] % m == 0:
            kept = (~_rows_of_inputs(zeros)).reshape(-1, m).sum(dim=1)
            if bool((kept <= n).all()):
                return f"{n}:{m}"
    return "unstructured"


@dataclass
class TensorSparsity:
    name: str
    shape: list[int]
    numel: int
    zeros: int
    structure: str
    dtype: str

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0


@dataclass
class SparsityReport:
    """Per-tensor sparsity plus totals; `file_bytes` is set when read from disk."""

    tensors: list[TensorSparsity] = field(default_factory=list)
    file_bytes: int | None = None
    source: str | None = None

    @property
    def total_params(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def total_zeros(self) -> int:
        return sum(t.zeros for t in self.tensors)

    @property
    def sparse_tensors(self) -> list[TensorSparsity]:
        """Weight matrices (2-D and up) with at least SPARSE_THRESHOLD zeros; zero-initialised
        biases are not pruning."""
        return [t for t in self.tensors if len(t.shape) >= 2 and t.sparsity >= SPARSE_THRESHOLD]

    def sparse_encoded_bytes(self) -> int:
        """Rough size if sparse tensors were stored as non-zeros plus a 1-bit mask."""
        total = 0
        sparse = {id(t) for t in self.sparse_tensors}
        for t in self.tensors:
            itemsize = torch.empty((), dtype=getattr(torch, t.dtype)).element_size()
            if id(t) in sparse:
                total += (t.numel - t.zeros) * itemsize + (t.numel + 7) // 8
            else:
                total += t.numel * itemsize
        return total

    def to_dict(self) -> dict[str, Any]:
        sparse = self.sparse_tensors
        sparse_numel = sum(t.numel for t in sparse)
        return {
            "source": self.source,
            "tensors": [{**asdict(t), "sparsity": t.sparsity} for t in self.tensors],
            "totals": {
                "params": self.total_params,
                "zeros": self.total_zeros,
                "sparsity": self.total_zeros / self.total_params if self.total_params else 0.0,
                "sparse_tensors": len(sparse),
                "sparse_tensor_params": sparse_numel,
                "sparse_tensor_sparsity": sum(t.zeros for t in sparse) / sparse_numel
                if sparse_numel
                else 0.0,
                "file_bytes": self.file_bytes,
                "sparse_encoded_bytes_estimate": self.sparse_encoded_bytes(),
            },
        }

    def format_table(self, show_all: bool = False) -> str:
        """A text table: sparse and matrix-shaped tensors (all with `show_all`), then totals."""
        rows = [t for t in self.tensors if show_all or len(t.shape) >= 2]
        header = ("parameter", "shape", "sparsity", "structure")
        lines = [
            (t.name, "x".join(map(str, t.shape)) or "scalar", f"{t.sparsity:.2%}", t.structure)
            for t in rows
        ]
        widths = [
            max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
            for i, h in enumerate(header)
        ]
        out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
        out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
        totals = self.to_dict()["totals"]
        hidden = len(self.tensors) - len(rows)
        if hidden:
            out.append(f"({hidden} 1-D tensors not shown; --all shows them)")
        out.append("")
        out.append(
            f"total: {totals['params']:,} parameters, {totals['zeros']:,} zeros ({totals['sparsity']:.2%})"
        )
        out.append(
            f"sparse weight tensors (>= {SPARSE_THRESHOLD:.0%} zeros): {totals['sparse_tensors']} holding "
            f"{totals['sparse_tensor_params']:,} parameters at {totals['sparse_tensor_sparsity']:.2%}"
        )
        if self.file_bytes is not None:
            out.append(
                f"size on disk: {self.file_bytes / 2**20:.2f} MiB; sparse-encoded estimate "
                f"(non-zeros + 1-bit mask): {totals['sparse_encoded_bytes_estimate'] / 2**20:.2f} MiB"
            )
        return "\n".join(out)


def analyze_tensors(items: Iterable[tuple[str, torch.Tensor]]) -> SparsityReport:
    """A report over (name, tensor) pairs (floating-point tensors only)."""
    report = SparsityReport()
    for name, tensor in items:
        if not torch.is_floating_point(tensor):
            continue
        tensor = tensor.detach()
        zeros = int(tensor.numel() - torch.count_nonzero(tensor))
        sparse = zeros >= SPARSE_THRESHOLD * tensor.numel() and zeros > 0
        report.tensors.append(
            TensorSparsity(
                name=name,
                shape=list(tensor.shape),
                numel=tensor.numel(),
                zeros=zeros,
                structure=detect_structure(tensor) if sparse else "dense",
                dtype=str(tensor.dtype).removeprefix("torch."),
            )
        )
    return report


def analyze_model(model: torch.nn.Module) -> SparsityReport:
    return analyze_tensors(model.named_parameters())


def load_tensors(path: str | os.PathLike) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of a checkpoint, one file at a time; never runs pickled code."""
    for file in weight_files(path):
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            try:
                with safe_open(str(file), framework="pt") as handle:
                    for key in handle.keys():
                        yield key, handle.get_tensor(key)
            except Exception as err:  # safetensors raises its own error types
                raise SparseforgeError(f"{file}: cannot read safetensors: {err}") from None
            continue
        try:
            state = torch.load(str(file), map_location="cpu", weights_only=True)
        except Exception as err:
            raise SparseforgeError(
                f"{file}: cannot load with torch.load(weights_only=True): {err}"
            ) from None
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        if not isinstance(state, dict):
            raise SparseforgeError(
                f"{file}: expected a state dict of tensors, found {type(state).__name__}"
            )
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                yield str(name), value


def analyze_path(path: str | os.PathLike) -> SparsityReport:
    """Sparsity of a saved model folder or checkpoint file, without the model class."""
    report = analyze_tensors(load_tensors(path))
    report.file_bytes = sum(f.stat().st_size for f in weight_files(path))
    report.source = str(path)
    return report


_PLAN_KEY = "sparseforge_structure"  # modifiers/pruning/compaction.PLAN_KEY (not imported: no torch models here)


def _first_int(config: dict[str, Any], *names: str) -> int | None:
    for name in names:
        if isinstance(config.get(name), int):
            return int(config[name])
    return None


def encoder_structure(config: dict[str, Any]) -> dict[str, Any] | None:
    """Dense sizes and kept heads / neurons per layer from a config.json dict (None if it does
    not describe a BERT-class encoder)."""
    plan = config.get(_PLAN_KEY)
    if isinstance(plan, dict):
        return {
            "dense": dict(plan["dense"]),
            "kept_layers": list(plan["kept_layers"]),
            "heads": [len(h) for h in plan["heads"]],
            "neurons": list(plan["neurons"]),
        }
    hidden = _first_int(config, "hidden_size", "dim")
    heads = _first_int(config, "num_attention_heads", "n_heads")
    layers = _first_int(config, "num_hidden_layers", "n_layers")
    ffn = _first_int(config, "intermediate_size", "hidden_dim")
    if not (hidden and heads and layers and ffn) or hidden % heads:
        return None
    dense = {
        "num_layers": layers,
        "num_heads": heads,
        "head_size": hidden // heads,
        "hidden_size": hidden,
        "intermediate_size": ffn,
    }
    return {
        "dense": dense,
        "kept_layers": list(range(layers)),
        "heads": [heads] * layers,
        "neurons": [ffn] * layers,
    }


def layer_macs(hidden: int, heads: int, head_size: int, neurons: int, sequence_length: int) -> int:
    """Multiply-accumulates per token of one encoder layer: Q/K/V/output projections, the
    attention scores and weighted sum over `sequence_length` keys, and the FFN pair."""
    width = heads * head_size
    return 4 * hidden * width + 2 * width * sequence_length + 2 * hidden * neurons


def encoder_macs(structure: dict[str, Any], sequence_length: int = 128) -> tuple[int, int]:
    """(MACs per token of the encoder as it is, of the dense encoder it came from)."""
    dense = structure["dense"]
    hidden, head_size = dense["hidden_size"], dense["head_size"]
    now = sum(
        layer_macs(hidden, h, head_size, n, sequence_length)
        for h, n in zip(structure["heads"], structure["neurons"], strict=True)
    )
    full = dense["num_layers"] * layer_macs(
        hidden, dense["num_heads"], head_size, dense["intermediate_size"], sequence_length
    )
    return now, full


def format_structure(structure: dict[str, Any], sequence_length: int = 128) -> str:
    """Per kept layer: heads and neurons kept of the dense counts; then the MAC ratio."""
    dense = structure["dense"]
    lines = [
        f"encoder structure: {len(structure['kept_layers'])} of {dense['num_layers']} layers kept"
    ]
    for origin, heads, neurons in zip(
        structure["kept_layers"], structure["heads"], structure["neurons"], strict=True
    ):
        lines.append(
            f"  layer {origin:>2}: heads {heads}/{dense['num_heads']}, FFN neurons {neurons}/{dense['intermediate_size']}"
        )
    now, full = encoder_macs(structure, sequence_length)
    lines.append(
        f"encoder multiply-accumulates per token (sequence length {sequence_length}): "
        f"{now / 1e6:.2f}M vs {full / 1e6:.2f}M dense ({now / full:.1%}, {full / now:.2f}x fewer)"
    )
    return "\n".join(lines)


def structure_of_path(path: str | os.PathLike) -> dict[str, Any] | None:
    """The encoder structure of a model folder's config.json, if it has one that describes it."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise SparseforgeError(f"{config_file}: cannot read: {err}") from None
    return encoder_structure(config)


def pruning_status(manager_or_modifiers: Any) -> dict[str, dict[str, float | None]]:
    """Current target and measured sparsity of every parameter a run's pruning modifiers mask."""
    modifiers = getattr(manager_or_modifiers, "modifiers", manager_or_modifiers)
    status: dict[str, dict[str, float | None]] = {}
    for mod in modifiers:
        if hasattr(mod, "sparsity_status"):
            status.update(mod.sparsity_status())
    return status


def cli_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="sparseforge analyze",
        description="Per-parameter sparsity of a saved model (Hugging Face folder, .safetensors or .bin).",
    )
    parser.add_argument("path", help="model folder or checkpoint file")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--all", action="store_true", help="also list 1-D tensors (biases, LayerNorm)"
    )
    parser.add_argument(
        "--sequence_length",
        "--sequence-length",
        type=int,
        default=128,
        help="tokens per sequence for the attention part of the MAC count (default 128)",
    )
    args = parser.parse_args(list(argv))
    report = analyze_path(args.path)
    structure = structure_of_path(args.path)
    if args.json:
        data = report.to_dict()
        if structure is not None:
            now, full = encoder_macs(structure, args.sequence_length)
            data["structure"] = {
                **structure,
                "sequence_length": args.sequence_length,
                "encoder_macs_per_token": now,
                "dense_encoder_macs_per_token": full,
            }
        print(json.dumps(data, indent=2))
    else:
        print(f"{args.path}:")
        print(report.format_table(show_all=args.all))
        if structure is not None:
            print()
            print(format_structure(structure, args.sequence_length))
    return 0
