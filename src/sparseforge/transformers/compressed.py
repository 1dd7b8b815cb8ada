"""`--save_compressed`: a quantized model folder in the compressed-tensors format.

The folder is what Hugging Face transformers reads with the `compressed-tensors` package
installed and without sparseforge: int8 weights (`int-quantized`, W8A8) or packed int4 / int8
(`pack-quantized`, weight-only), per-channel or per-group (`strategy: group`, `group_size`)
`weight_scale`, static `input_scale` / `input_zero_point`, and `quantization_config` in config.json. The model's fake-quantized Linear
modules (sparseforge QAT or PTQ) are translated one to one: an unsigned 8-bit activation grid with
zero point z is the signed grid with zero point z - 128, so values and outputs are unchanged.

compressed-tensors >= 0.15 no longer has sparse compressors (sparse-bitmask was dropped, and the
current transformers loader ignores `sparsity_config`), so pruned zeros are stored as int8 zeros:
the file shrinks with quantization (about 4x), not with sparsity.
"""

from __future__ import annotations

import copy
import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparseforge.errors import ModelMatchError, SparseforgeError
from sparseforge.modifiers.quantization.modules import QuantizedLinear
from sparseforge.modifiers.quantization.observers import FakeQuantize, fake_quantizers

logger = logging.getLogger(__name__)

_LINEAR_QUANTIZERS = ("input_fake_quant", "weight_fake_quant")
INSTALL_HINT = "install the extra: pip install 'sparseforge[compressed]' (compressed-tensors)"


def require_compressed_tensors() -> None:
    """A SparseforgeError saying how to install compressed-tensors when it is missing."""
    try:
        import compressed_tensors  # noqa: F401
    except ImportError:
        raise SparseforgeError(
            f"--save_compressed needs the compressed-tensors package; {INSTALL_HINT}"
        ) from None


def unsupported_quantizers(model: nn.Module) -> list[str]:
    """Fake quantizers the compressed-tensors format cannot hold (only Linear inputs and weights)."""
    linear_owned = {
        f"{name}.{child}"
        for name, module in model.named_modules()
        if isinstance(module, QuantizedLinear)
        for child in _LINEAR_QUANTIZERS
    }
    return [name for name in fake_quantizers(model) if name not in linear_owned]


def check_plan(model: nn.Module, modifiers: list[Any]) -> None:
    """Before any work: the recipe quantizes, and only what the format can hold (Linear inputs
    and weights: no embeddings, attention matmuls or outputs)."""
    from sparseforge.modifiers.quantization import GPTQModifier, QuantizationModifier
    from sparseforge.modifiers.quantization.scheme import LINEAR

    require_compressed_tensors()
    quantizing = [mod for mod in modifiers if isinstance(mod, QuantizationModifier)]
    if not quantizing and not any(isinstance(mod, GPTQModifier) for mod in modifiers):
        raise ModelMatchError(
            "--save_compressed needs a quantized model (a QuantizationModifier or GPTQModifier in the recipe): compressed-tensors "
            "has no sparse-only format any more, so a pruned float model would not get smaller"
        )
    for mod in quantizing:
        for name, (_module, kind, scheme) in mod.plan(model).items():
            if kind != LINEAR or scheme.output_activations is not None or scheme.weights is None:
                raise ModelMatchError(
                    f"--save_compressed holds Linear input and weight quantization only, but {mod.name} also "
                    f"quantizes {name} ({kind}{', outputs' if scheme.output_activations else ''}); use e.g. "
                    "scheme: W8A8 with ignore: [Embedding, QATMatMul]"
                )


def _args(fq: FakeQuantize, strategy: str) -> Any:
    from compressed_tensors.quantization import QuantizationArgs

    return QuantizationArgs(
        num_bits=fq.num_bits,
        type="int",
        symmetric=fq.symmetric,
        strategy=strategy,
        group_size=fq.group_size if strategy == "group" else None,
        dynamic=False,
    )


def _weight_strategy(fq: FakeQuantize) -> str:
    if fq.grouped:
        return "group"
    return "channel" if fq.per_channel else "tensor"


def _plain_copy(
    model: nn.Module,
) -> tuple[nn.Module, dict[str, tuple[FakeQuantize | None, FakeQuantize | None]]]:
    """A float copy with plain nn.Linear modules, and each one's (input, weight) quantizers."""
    plain = copy.deepcopy(model)
    quantizers = {}
    for name, module in plain.named_modules():
        if isinstance(module, QuantizedLinear):
            found = tuple(module._modules.pop(child, None) for child in _LINEAR_QUANTIZERS)
            module.__class__ = nn.Linear
            if found[1] is None:
                raise ModelMatchError(
                    f"--save_compressed: {name} quantizes its input but not its weights"
                )
            quantizers[name] = found
    return plain, quantizers


def _config(quantizers: dict[str, tuple[FakeQuantize | None, FakeQuantize]]) -> Any:
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme

    groups: dict[str, Any] = {}
    for name, (input_fq, weight_fq) in quantizers.items():
        weights = _args(weight_fq, _weight_strategy(weight_fq))
        inputs = _args(input_fq, "tensor") if input_fq is not None else None
        key = f"{weights.model_dump_json()}|{inputs.model_dump_json() if inputs else None}"
        if key not in groups:
            groups[key] = QuantizationScheme(targets=[], weights=weights, input_activations=inputs)
        groups[key].targets.append("re:^" + re.escape(name) + "$")
    named = {f"group_{i}": scheme for i, scheme in enumerate(groups.values())}
    return QuantizationConfig(config_groups=named, quantization_status="frozen")


@torch.no_grad()
def _copy_qparams(
    plain: nn.Module, quantizers: dict[str, tuple[FakeQuantize | None, FakeQuantize]]
) -> None:
    for name, (input_fq, weight_fq) in quantizers.items():
        module = plain.get_submodule(name)
        module.weight_scale.copy_(weight_fq.scale.reshape(module.weight_scale.shape))
        if input_fq is not None:
            module.input_scale.copy_(input_fq.scale.reshape(module.input_scale.shape))
            shift = (
                0 if input_fq.symmetric else 2 ** (input_fq.num_bits - 1)
            )  # uint8 grid -> int8 grid
            zero_point = getattr(module, "input_zero_point", None)
            if zero_point is not None:
                zero_point.copy_(
                    (input_fq.zero_point.reshape(zero_point.shape) - shift).to(zero_point.dtype)
                )


def save_compressed_model(model: nn.Module, output_dir: Path) -> dict[str, Any]:
    """Save `model` (with fake-quantized Linear modules) in the compressed-tensors format; returns
    the sizes: bytes of the quantized weights against their dense FP32 bytes, and of the file."""
    require_compressed_tensors()
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import apply_quantization_config

    unsupported = unsupported_quantizers(model)
    if unsupported:
        raise ModelMatchError(
            f"--save_compressed holds Linear input and weight quantization only; also quantized: {', '.join(unsupported[:4])}; "
            "leave those out of the QuantizationModifier (e.g. ignore: [Embedding, QATMatMul])"
        )
    plain, quantizers = _plain_copy(model)
    if not quantizers:
        raise ModelMatchError(
            "--save_compressed needs a quantized model (QuantizationModifier in the recipe): compressed-tensors "
            "has no sparse-only format any more, so a pruned float model would not get smaller"
        )
    apply_quantization_config(plain, _config(quantizers), show_progress=False)
    _copy_qparams(plain, quantizers)
    dense_bytes = sum(plain.get_submodule(n).weight.numel() * 4 for n in quantizers)
    compressor = ModelCompressor.from_pretrained_model(plain)
    compressor.compress_model(plain)
    plain.save_pretrained(str(output_dir))
    compressor.update_config(str(output_dir))
    stored = 0
    for name in quantizers:
        state = plain.get_submodule(name).state_dict()
        stored += sum(
            t.numel() * t.element_size() for key, t in state.items() if key.startswith("weight")
        )
    file_bytes = sum(f.stat().st_size for f in output_dir.glob("*.safetensors"))
    dense_file = sum(t.numel() * 4 for t in model.state_dict().values() if t.is_floating_point())
    sizes = {
        "format": str(compressor.quantization_config.format),
        "quantized_weight_bytes": stored,
        "quantized_weight_dense_fp32_bytes": dense_bytes,
        "quantized_weight_fraction": stored / dense_bytes,
        "file_bytes": file_bytes,
        "dense_fp32_file_bytes_estimate": dense_file,
    }
    logger.info(
        "save_compressed: quantized weights take %.1f%% of their FP32 bytes",
        100 * sizes["quantized_weight_fraction"],
    )
    return sizes
