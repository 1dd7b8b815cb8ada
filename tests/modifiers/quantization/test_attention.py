"""Quantized attention through transformers' AttentionInterface: same math, quantized inputs."""

from __future__ import annotations

import torch
from conftest import make_tiny_model

from sparseforge.modifiers.quantization import ATTN_IMPLEMENTATION, QuantizationModifier
from sparseforge.modifiers.quantization.attention import is_attention_module
from sparseforge.transformers.attention import register_attention


def inputs():
    ids = torch.randint(5, 100, (2, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_registered_with_transformers():
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    register_attention()
    assert ATTN_IMPLEMENTATION in AttentionInterface._global_mapping
    assert ATTN_IMPLEMENTATION in ALL_MASK_ATTENTION_FUNCTIONS


def test_unquantized_path_equals_sdpa_with_padding():
    model = make_tiny_model("text-classification")
    expected = model(**inputs()).logits
    register_attention()
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    assert torch.allclose(model(**inputs()).logits, expected, atol=1e-6)


def test_only_selected_attention_layers_are_quantized():
    model = make_tiny_model("text-classification")
    expected = model(**inputs()).logits
    QuantizationModifier(
        submodules=["bert.encoder.layer.0.attention"], quantize_linear_activations=False
    ).apply_structure(model)
    layer0 = model.bert.encoder.layer[0].attention.self
    layer1 = model.bert.encoder.layer[1].attention.self
    assert is_attention_module(layer0) and hasattr(layer0, "matmul_fake_quant")
    assert not hasattr(layer1, "matmul_fake_quant")
    assert model.config._attn_implementation == ATTN_IMPLEMENTATION
    # quantizers that never observed anything have scale 1: the outputs must now differ
    assert not torch.allclose(model(**inputs()).logits, expected, atol=1e-4)


def test_matmul_inputs_pass_through_quantizers():
    model = make_tiny_model("text-classification")
    QuantizationModifier(
        submodules=["bert.encoder.layer.1"], exclude_module_types=["Linear"]
    ).apply_structure(model)
    quantizers = model.bert.encoder.layer[1].attention.self.matmul_fake_quant
    for quantizer in quantizers.children():
        quantizer.observer_enabled = True
    model(**inputs())
    assert all(q.observed for q in quantizers.children())
    assert 0.0 <= float(quantizers.probs.min_val) and float(quantizers.probs.max_val) <= 1.0
    assert type(model.bert.encoder.layer[1].attention.self.query) is torch.nn.Linear


def test_the_modifier_uses_the_registered_hook_and_refuses_without_one():
    import pytest

    from sparseforge import Manager, ModelMatchError
    from sparseforge.modifiers.quantization import attention_hook, set_attention_hook

    recipe = "modifiers:\n  - !QuantizationModifier\n      submodules: [bert.encoder.layer.0]\n"
    calls = []
    previous = set_attention_hook(lambda model, modules: calls.append(len(modules)))
    try:
        model = make_tiny_model("text-classification")
        QuantizationModifier(submodules=["bert.encoder.layer.0"]).apply_structure(model)
        assert calls == [1]  # one attention module handed to the hook
        set_attention_hook(None)
        manager = Manager(recipe)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        with pytest.raises(ModelMatchError, match="no attention hook is registered"):
            manager.modify(make_tiny_model("text-classification"), optimizer, 1)
        # ignoring the attention matmuls needs no hook
        Manager(
            recipe.replace("layer.0]", "layer.0]\n      exclude_module_types: [QATMatMul]")
        ).modify(make_tiny_model("text-classification"), optimizer, 1)
    finally:
        set_attention_hook(previous)
    assert attention_hook() is previous
