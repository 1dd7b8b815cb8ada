"""SmoothQuantModifier: mappings found by data flow, the SmoothQuant scales, exactness check."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model

import sparseforge
from sparseforge import ModelMatchError, RecipeError
from sparseforge.recipe import Recipe
from sparseforge.transformers import load_model


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


def batches(count: int = 4) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(5, 100, (1, 12), generator=gen)} for _ in range(count)]


def input_max(model, name: str, data) -> torch.Tensor:
    """max |input channel| of module `name` over `data` (what SmoothQuant calibrates)."""
    seen = []
    handle = model.get_submodule(name).register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].detach().abs().reshape(-1, args[0].shape[-1]))
    )
    with torch.no_grad():
        for batch in data:
            model(**batch)
    handle.remove()
    return torch.cat(seen).amax(dim=0)


def test_decoder_norms_are_found_by_data_flow_and_scaled_by_the_smoothquant_formula():
    model, data = tiny_llama(), batches()
    # make one channel an outlier, as in real LLM activations
    with torch.no_grad():
        model.model.layers[0].input_layernorm.weight[5] = 20.0
    norm = model.model.layers[0].input_layernorm
    balance = [getattr(model.model.layers[0].self_attn, p) for p in ("q_proj", "k_proj", "v_proj")]
    act = input_max(model, "model.layers.0.self_attn.q_proj", data)
    weight = torch.stack([m.weight.abs().amax(dim=0) for m in balance]).amax(dim=0)
    scales = act.pow(0.8) / weight.pow(0.2)
    old_norm, old_q = norm.weight.detach().clone(), balance[0].weight.detach().clone()
    with torch.no_grad():
        reference = model(**data[0]).logits
    result = sparseforge.oneshot(
        model, "oneshot_modifiers:\n  - !SmoothQuantModifier {smoothing_strength: 0.8}\n", data
    )
    applied = {m["smooth"]: m["balance"] for m in result.report["smoothquant"]["applied"]}
    assert applied["model.layers.0.input_layernorm"] == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.k_proj",
        "model.layers.0.self_attn.v_proj",
    ]
    assert applied["model.layers.1.post_attention_layernorm"] == [
        "model.layers.1.mlp.gate_proj",
        "model.layers.1.mlp.up_proj",
    ]
    assert result.report["smoothquant"]["skipped"] == {}
    torch.testing.assert_close(norm.weight.detach(), old_norm / scales)
    torch.testing.assert_close(balance[0].weight.detach(), old_q * scales)
    with torch.no_grad():
        torch.testing.assert_close(model(**data[0]).logits, reference, atol=1e-5, rtol=1e-4)
    smoothed = input_max(model, "model.layers.0.self_attn.q_proj", data)
    assert smoothed.max() / smoothed.median() < act.max() / act.median()  # the outlier is flatter


def test_post_layernorm_encoder_mappings_are_found_but_not_exact_so_skipped():
    """BERT's LayerNorm output is also the residual stream: scaling it would change the model."""
    model, data = make_tiny_model(), batches()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = sparseforge.oneshot(model, "oneshot_modifiers:\n  - !SmoothQuantModifier {}\n", data)
    skipped = result.report["smoothquant"]["skipped"]
    assert set(skipped) == {
        "bert.embeddings.LayerNorm",
        "bert.encoder.layer.0.attention.output.LayerNorm",
        "bert.encoder.layer.0.output.LayerNorm",
        "bert.encoder.layer.1.attention.output.LayerNorm",
    }
    assert all("not exact" in reason for reason in skipped.values())
    assert result.report["smoothquant"]["applied"] == []
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


VALUE_TO_OUTPUT = (
    "oneshot_modifiers:\n  - !SmoothQuantModifier\n"
    "      mappings: [[['re:.*attention\\.output\\.dense$'], 're:.*attention\\.self\\.value$']]\n"
)


def test_value_to_output_mapping_is_exact_on_bert_and_reloads(tmp_path):
    model, data = make_tiny_model(), batches()
    with torch.no_grad():
        reference = model(**data[0]).logits
    recipe = (
        VALUE_TO_OUTPUT
        + "  - !QuantizationModifier {scheme: W8A8, ignore: [Embedding, QATMatMul]}\n"
    )
    result = sparseforge.oneshot(model, recipe, data, output_dir=tmp_path / "out")
    applied = result.report["smoothquant"]["applied"]
    assert [m["smooth"] for m in applied] == [
        "bert.encoder.layer.0.attention.self.value",
        "bert.encoder.layer.1.attention.self.value",
    ]
    assert applied[0]["balance"] == ["bert.encoder.layer.0.attention.output.dense"]
    float_check = make_tiny_model()
    sparseforge.oneshot(float_check, VALUE_TO_OUTPUT, data)
    with torch.no_grad():
        torch.testing.assert_close(float_check(**data[0]).logits, reference, atol=1e-5, rtol=1e-4)
        reloaded = load_model(tmp_path / "out", "text-classification")
        torch.testing.assert_close(reloaded(**data[0]).logits, model(**data[0]).logits)


def test_fields_and_order_are_checked_before_any_work():
    with pytest.raises(RecipeError, match="smoothing_strength"):
        Recipe.from_text("modifiers:\n  - !SmoothQuantModifier {smoothing_strength: 1.0}\n")
    model, data = make_tiny_model(), batches()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RecipeError, match="must come before"):
        sparseforge.oneshot(
            model,
            "oneshot_modifiers:\n  - !QuantizationModifier {scheme: W8A8}\n  - !SmoothQuantModifier {}\n",
            data,
        )
    with pytest.raises(ModelMatchError, match="re:.*q_proj"):
        sparseforge.oneshot(
            model,
            "oneshot_modifiers:\n  - !SmoothQuantModifier\n      mappings: [[['re:.*q_proj'], 're:.*input_layernorm']]\n",
            data,
        )
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
