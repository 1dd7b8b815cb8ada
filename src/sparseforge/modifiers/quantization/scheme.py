"""QuantizationScheme: how a module's inputs, weights and outputs are quantized (SparseML's schema).

    scheme:
      input_activations: {num_bits: 8, symmetric: false}       # default: asymmetric uint8
      weights: {num_bits: 8, symmetric: true, strategy: channel} # default: symmetric int8 per tensor
      output_activations: null                                  # default: not quantized

`QuantizationScheme.load` also takes SparseML's aliases 'default', 'deepsparse' and 'tensorrt', and
llm-compressor's preset names (`PRESET_SCHEMES`): W8A8 (int8 per-channel weights, static
symmetric int8 activations per tensor: sparseforge quantizes activations statically, where
llm-compressor's W8A8 is dynamic per token), W8A16 (weight-only, per channel) and W4A16
(weight-only, 4-bit values in the int8 grid [-8, 7], one scale per group of 128 input columns of a
row: `strategy: group, group_size: 128`, as llm-compressor's preset).
`legacy_schemes` turns the legacy modifier fields (activation_bits, quantize_linear_activations,
tensorrt, ...) into one scheme per kind of module, so both recipe forms share one code path.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sparseforge.errors import ModelMatchError
from sparseforge.modifiers.quantization.observers import FakeQuantize, check_groups


class QuantizationArgs(BaseModel):
    """How one tensor is quantized: bits, symmetric or not, per tensor, per output channel, or
    (weights) per group of `group_size` input columns of each row."""

    model_config = ConfigDict(extra="forbid")

    num_bits: int = 8
    symmetric: bool = False
    strategy: Literal["tensor", "channel", "group"] = "tensor"
    group_size: int | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _group_strategy(cls, data: Any) -> Any:
        # compressed-tensors: a group_size without a strategy means strategy: group.
        if isinstance(data, dict) and data.get("group_size") is not None and "strategy" not in data:
            return {**data, "strategy": "group"}
        return data

    @model_validator(mode="after")
    def _check_group(self) -> QuantizationArgs:
        if self.strategy == "group" and (self.group_size is None or self.group_size < 1):
            raise ValueError(
                f"strategy: group needs group_size >= 1 (e.g. 128), got {self.group_size}"
            )
        if self.strategy != "group" and self.group_size is not None:
            raise ValueError(
                f"group_size {self.group_size} needs strategy: group, got strategy: {self.strategy}"
            )
        return self

    @field_validator("num_bits")
    @classmethod
    def _bits(cls, value: int) -> int:
        if not 2 <= value <= 8:
            raise ValueError(
                f"num_bits must be within 2..8 (ONNX QuantizeLinear is 8-bit), got {value}"
            )
        return value

    @field_validator("kwargs")
    @classmethod
    def _known_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = set(value) - {"reduce_range", "averaging_constant"}
        if unknown:
            raise ValueError(
                f"unsupported kwargs {sorted(unknown)}; supported: reduce_range, averaging_constant"
            )
        return value

    def fake_quantize(
        self, channels: int | None = None, columns: int | None = None
    ) -> FakeQuantize:
        """A fresh FakeQuantize for these arguments: `channels` (rows) for strategy channel and
        group, `columns` (a weight's input width) for group."""
        return FakeQuantize(
            num_bits=self.num_bits,
            symmetric=self.symmetric,
            channels=channels if self.strategy in ("channel", "group") else None,
            reduce_range=bool(self.kwargs.get("reduce_range", False)),
            averaging_constant=float(self.kwargs.get("averaging_constant", 0.01)),
            group_size=self.group_size if self.strategy == "group" else None,
            columns=columns,
        )

    def check_weight(self, owner: str, name: str, weight_shape: tuple[int, ...]) -> None:
        """ModelMatchError (before any work) when a group_size does not fit module `name`'s weight."""
        if self.strategy != "group":
            return
        assert self.group_size is not None  # checked by the validator
        try:
            check_groups(
                self.group_size,
                weight_shape[0] if len(weight_shape) == 2 else None,
                weight_shape[1] if len(weight_shape) == 2 else None,
                0,
            )
        except ValueError as err:
            raise ModelMatchError(
                f"{owner}: {name} (weight {tuple(weight_shape)}): {err}"
            ) from None


def default_activation_args() -> QuantizationArgs:
    return QuantizationArgs(num_bits=8, symmetric=False)


def default_weight_args() -> QuantizationArgs:
    return QuantizationArgs(num_bits=8, symmetric=True)


class QuantizationScheme(BaseModel):
    """Inputs, weights and outputs of a module; `None` leaves that tensor in float."""

    model_config = ConfigDict(extra="forbid")

    input_activations: QuantizationArgs | None = Field(default_factory=default_activation_args)
    weights: QuantizationArgs | None = Field(default_factory=default_weight_args)
    output_activations: QuantizationArgs | None = None
    target_hardware: str | None = None

    @model_validator(mode="after")
    def _weights_only_groups(self) -> QuantizationScheme:
        for field in ("input_activations", "output_activations"):
            args = getattr(self, field)
            if args is not None and args.strategy == "group":
                raise ValueError(f"{field}: strategy: group (group_size) is for weights only")
        return self

    @classmethod
    def preset(cls, name: str) -> QuantizationScheme | None:
        """llm-compressor's preset scheme `name` (case-insensitive), or None if it is not one."""
        spec = PRESET_SCHEMES.get(name.strip().upper())
        if spec is None:
            return None
        weight_bits, activation_bits, group_size = spec
        weights = QuantizationArgs(
            num_bits=weight_bits,
            symmetric=True,
            strategy="group" if group_size else "channel",
            group_size=group_size,
        )
        activations = (
            QuantizationArgs(num_bits=activation_bits, symmetric=True) if activation_bits else None
        )
        return cls(input_activations=activations, weights=weights)

    @classmethod
    def load(cls, scheme: QuantizationScheme | dict[str, Any] | str | None) -> QuantizationScheme:
        """A scheme from an object, a dict (as in a recipe), or 'default' / 'deepsparse' / 'tensorrt'."""
        if isinstance(scheme, cls):
            return scheme
        if scheme is None or scheme == "default":
            return cls()
        if scheme == "deepsparse":
            return cls(target_hardware="deepsparse")
        if scheme == "tensorrt":
            return cls(
                input_activations=QuantizationArgs(num_bits=8, symmetric=True),
                target_hardware="tensorrt",
            )
        if isinstance(scheme, str):
            preset = cls.preset(scheme)
            if preset is not None:
                return preset
            raise ValueError(
                f"unknown scheme alias '{scheme}'; valid: default, deepsparse, tensorrt, "
                f"{', '.join(PRESET_SCHEMES)}, or a mapping"
            )
        if isinstance(scheme, dict):
            return cls.model_validate(
                {k: (None if v in ("None", "null") else v) for k, v in scheme.items()}
            )
        raise ValueError(
            f"a scheme must be a mapping or an alias string, got {type(scheme).__name__}"
        )


# llm-compressor's preset names -> (weight bits, activation bits or None for weight-only, group size
# or None for per channel).
PRESET_SCHEMES: dict[str, tuple[int, int | None, int | None]] = {
    "W8A8": (8, 8, None),
    "W8A16": (8, None, None),
    "W4A16": (4, None, 128),
}

# The kinds of module QAT rewrites; scheme_overrides / exclude_module_types may name them.
LINEAR, EMBEDDING, ATTENTION = "Linear", "Embedding", "QATMatMul"


def legacy_schemes(
    *,
    activation_bits: int,
    weight_bits: int,
    reduce_range: bool,
    tensorrt: bool,
    quantize_linear_activations: bool,
    quantize_embedding_activations: bool,
    activation_kwargs: dict[str, Any] | None = None,
    weight_kwargs: dict[str, Any] | None = None,
) -> dict[str, QuantizationScheme]:
    """SparseML's legacy fields as one scheme per module kind.

    Linear inputs are always quantized (SparseML wrapped each Linear in a QuantWrapper);
    `quantize_linear_activations` adds the Linear's output; embeddings have no float input.
    `tensorrt` makes activations symmetric and drops output quantization, as SparseML did.
    `activation_kwargs` / `weight_kwargs` are SparseML's `*_qconfig_kwargs` already reduced to
    what a QuantizationArgs takes (`reduce_range`, `averaging_constant`).
    """
    kwargs = {"reduce_range": True} if reduce_range else {}
    activation = QuantizationArgs(
        num_bits=activation_bits, symmetric=tensorrt, kwargs={**kwargs, **(activation_kwargs or {})}
    )
    weight = QuantizationArgs(
        num_bits=weight_bits, symmetric=True, kwargs={**kwargs, **(weight_kwargs or {})}
    )
    return {
        LINEAR: QuantizationScheme(
            input_activations=activation,
            weights=weight,
            output_activations=activation if quantize_linear_activations and not tensorrt else None,
        ),
        EMBEDDING: QuantizationScheme(
            input_activations=None,
            weights=weight,
            output_activations=activation
            if quantize_embedding_activations and not tensorrt
            else None,
        ),
        ATTENTION: QuantizationScheme(
            input_activations=activation, weights=None, output_activations=None
        ),
    }
