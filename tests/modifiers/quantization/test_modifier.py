"""QuantizationModifier on tiny BERT models: schedule, placement, sparsity, resume, recipes."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model

from sparseforge import Manager, ModelMatchError, Recipe, RecipeError
from sparseforge.modifiers.quantization import (
    ATTN_IMPLEMENTATION,
    FakeQuantize,
    QuantizationModifier,
    QuantizedEmbedding,
    QuantizedLinear,
    fake_quantizers,
    quantization_summary,
)


@pytest.mark.parametrize("task", ["text-classification", "question-answering"])
def test_observers_run_then_freeze_on_schedule(task, train, qat_recipe):
    model = make_tiny_model(task)
    head = "classifier" if task == "text-classification" else "qa_outputs"
    recipe = qat_recipe(
        start=1.0, freeze=2.0, submodules=f"[bert.embeddings, bert.encoder, {head}]"
    )
    history = []
    scale_name = "bert.encoder.layer.0.attention.self.query.input_fake_quant"

    def record(step, manager):
        quantizers = fake_quantizers(model)
        scale = float(quantizers[scale_name].scale) if scale_name in quantizers else None
        history.append((manager.epoch, quantization_summary(model), scale))

    train(model, recipe, steps=7, steps_per_epoch=2, callback=record)
    before = [h for h in history if h[0] <= 1.0]
    assert all(h[1]["fake_quantizers"] == 0 for h in before[:-1])
    running = [h for h in history if 1.0 < h[0] <= 2.0]
    assert running and all(
        h[1]["observers_running"] == h[1]["fake_quantizers"] > 0 for h in running
    )
    frozen = [h for h in history if h[0] > 2.0]
    assert frozen and all(h[1]["observers_running"] == 0 for h in frozen)
    # scales moved while observing and stop moving once frozen
    assert len({h[2] for h in running}) > 1
    assert len({h[2] for h in frozen}) == 1
    assert model.config._attn_implementation == ATTN_IMPLEMENTATION


def test_placement_follows_submodules_and_exclusions(train):
    model = make_tiny_model("text-classification")
    recipe = """
    quantization_modifiers:
      - !QuantizationModifier
          start_epoch: 0.0
          quantize_embeddings: 0
          quantize_linear_activations: 0
          exclude_module_types: ['LayerNorm', 'Tanh', 'BertOutput']
          submodules: [bert.encoder]
    """
    train(model, recipe, steps=1)
    modules = dict(model.named_modules())
    assert isinstance(modules["bert.encoder.layer.0.attention.self.query"], QuantizedLinear)
    assert isinstance(modules["bert.encoder.layer.1.intermediate.dense"], QuantizedLinear)
    # BertOutput (the FFN's output dense) is excluded by type, with its children
    assert type(modules["bert.encoder.layer.0.output.dense"]) is torch.nn.Linear
    # outside submodules: untouched
    assert type(modules["classifier"]) is torch.nn.Linear
    assert type(modules["bert.pooler.dense"]) is torch.nn.Linear
    assert type(modules["bert.embeddings.word_embeddings"]) is torch.nn.Embedding
    assert "matmul_fake_quant" in dict(
        modules["bert.encoder.layer.0.attention.self"].named_children()
    )
    names = list(fake_quantizers(model))
    assert names and all(name.startswith("bert.encoder.") for name in names)
    assert not any("output_fake_quant" in name for name in names)  # quantize_linear_activations: 0


def test_embeddings_and_linear_outputs_when_asked(train):
    model = make_tiny_model("text-classification")
    recipe = """
    quantization_modifiers:
      - !QuantizationModifier
          start_epoch: 0.0
          submodules: [bert.embeddings, classifier]
          exclude_module_types: [QATMatMul]
    """
    train(model, recipe, steps=1)
    assert isinstance(model.bert.embeddings.word_embeddings, QuantizedEmbedding)
    assert hasattr(model.bert.embeddings.word_embeddings, "output_fake_quant")
    assert hasattr(
        model.classifier, "output_fake_quant"
    )  # legacy default quantize_linear_activations: true
    assert not any("matmul_fake_quant" in name for name in fake_quantizers(model))


def test_scheme_form_with_overrides_and_ignore(train):
    model = make_tiny_model("text-classification")
    recipe = """
    quantization_modifiers:
      - !QuantizationModifier
          start_epoch: 0.0
          scheme:
            input_activations: {num_bits: 8, symmetric: false}
            weights: {num_bits: 8, symmetric: true, strategy: channel}
          scheme_overrides:
            Embedding: {input_activations: null, weights: {num_bits: 8, symmetric: true}}
            classifier: {input_activations: null, weights: {num_bits: 4, symmetric: true}}
          ignore: [LayerNorm, bert.pooler]
    """
    train(model, recipe, steps=1)
    query = model.bert.encoder.layer[0].attention.self.query
    assert query.weight_fake_quant.per_channel and query.weight_fake_quant.scale.shape == (32,)
    assert not model.bert.embeddings.word_embeddings.weight_fake_quant.per_channel
    assert model.classifier.weight_fake_quant.quant_min == -8
    assert not hasattr(model.classifier, "input_fake_quant")
    assert type(model.bert.pooler.dense) is torch.nn.Linear


def test_parameters_keep_identity_and_pruned_zeros_stay_zero(train, make_batch):
    model = make_tiny_model("text-classification")
    params_before = dict(model.named_parameters())
    # a 70% magnitude-sparse encoder, held by the pruning package's ConstantPruningModifier
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("bert.encoder") and name.endswith("weight") and param.dim() == 2:
                threshold = param.abs().flatten().kthvalue(int(0.7 * param.numel())).values
                param[param.abs() <= threshold] = 0.0
    zeros = {
        name: (p == 0).clone()
        for name, p in model.named_parameters()
        if name.startswith("bert.encoder") and p.dim() == 2
    }
    recipe = """
    modifiers:
      - !ConstantPruningModifier
          start_epoch: 0.0
          params: ['re:bert.encoder.*weight']
      - !QuantizationModifier
          start_epoch: 0.0
          submodules: [bert.encoder]
    """
    manager = train(model, recipe, steps=6, steps_per_epoch=2)
    manager.finalize(model)
    assert dict(model.named_parameters()).keys() == params_before.keys()
    assert all(params_before[name] is param for name, param in model.named_parameters())
    for name, mask in zeros.items():
        param = model.get_parameter(name)
        assert torch.equal(param == 0, mask), name
        module = model.get_submodule(name.rsplit(".", 1)[0])
        quantized = module.weight_fake_quant(param)
        assert bool((quantized[mask] == 0).all()), name
        assert float(mask.float().mean()) >= 0.69


def test_resume_restores_structure_and_flags(train):
    recipe = """
    quantization_modifiers:
      - !QuantizationModifier
          start_epoch: 0.0
          disable_quantization_observer_epoch: 1.0
          submodules: [bert.encoder]
    """
    model = make_tiny_model("text-classification")
    manager = train(model, recipe, steps=6, steps_per_epoch=4)
    saved_manager, saved_model = (
        manager.state_dict(),
        {k: v.clone() for k, v in model.state_dict().items()},
    )

    fresh = make_tiny_model("text-classification", seed=1)
    resumed = Manager(recipe)
    resumed.modify(fresh, torch.optim.SGD(fresh.parameters(), lr=0.0), 4)
    resumed.load_state_dict(saved_manager)
    fresh.load_state_dict(saved_model)
    assert quantization_summary(fresh) == quantization_summary(model)
    assert quantization_summary(fresh)["observers_running"] == 0
    ids = torch.randint(5, 100, (2, 10))
    model.eval(), fresh.eval()
    assert torch.equal(model(input_ids=ids).logits, fresh(input_ids=ids).logits)


def test_calibration_steps_without_data_freeze_after_n_steps(train):
    recipe = """
    quantization_modifiers:
      - !QuantizationModifier
          start_epoch: 0.0
          num_calibration_steps: 3
          submodules: [classifier]
    """
    running = []
    model = make_tiny_model("text-classification")
    train(
        model,
        recipe,
        steps=6,
        callback=lambda step, m: running.append(quantization_summary(model)["observers_running"]),
    )
    assert running[:3] == [3, 3, 3] and running[4:] == [0, 0]


def test_calibration_steps_use_the_grad_sampler(make_batch):
    recipe = """
    quantization_modifiers:
      - !QuantizationModifier
          start_epoch: 0.0
          num_calibration_steps: 2
          submodules: [classifier]
    """
    model = make_tiny_model("text-classification")
    calls = []

    def sampler(module, num_batches):
        for index in range(num_batches):
            calls.append(index)
            module(**make_batch(module, 100 + index)).loss.backward()
            yield

    manager = Manager(recipe)
    optimizer = manager.modify(
        model, torch.optim.SGD(model.parameters(), lr=0.0), 4, grad_sampler=sampler
    )
    model(**make_batch(model, 0)).loss.backward()
    grad = model.classifier.weight.grad.clone()
    optimizer.step()
    assert calls == [0, 1]
    assert model.classifier.input_fake_quant.observed
    assert torch.equal(model.classifier.weight.grad, grad)  # the training step's gradient is kept


def test_apply_structure_is_frozen_and_idempotent():
    modifier = QuantizationModifier(submodules=["bert.encoder"])
    model = make_tiny_model("text-classification")
    modifier.apply_structure(model)
    count = len(fake_quantizers(model))
    modifier.apply_structure(model)
    assert len(fake_quantizers(model)) == count > 0
    assert all(not q.observer_enabled for q in fake_quantizers(model).values())
    assert all(isinstance(q, FakeQuantize) for q in fake_quantizers(model).values())


def test_recipe_roundtrip_and_validation():
    text = """
    quantization_modifiers:
      - !QuantizationModifier
          start_epoch: 30.0
          disable_quantization_observer_epoch: 35.0
          freeze_bn_stats_epoch: 35.0
          submodules: [bert.embeddings, bert.encoder, qa_outputs]
    """
    recipe = Recipe.load(text)
    again = Recipe.load(recipe.to_yaml())
    assert again.modifiers[0] == recipe.modifiers[0]
    assert recipe.max_epochs == 35
    scheme = Recipe.load("modifiers:\n  - !QuantizationModifier\n      scheme: tensorrt\n")
    assert Recipe.load(scheme.to_yaml()).modifiers[0].scheme == scheme.modifiers[0].scheme
    with pytest.raises(RecipeError, match="either the legacy fields"):
        Recipe.load(
            "modifiers:\n  - !QuantizationModifier\n      activation_bits: 8\n      ignore: [LayerNorm]\n"
        )
    with pytest.raises(RecipeError, match="end_epoch"):
        Recipe.load("modifiers:\n  - !QuantizationModifier\n      end_epoch: 3\n")
    with pytest.raises(RecipeError, match="unknown field"):
        Recipe.load("modifiers:\n  - !QuantizationModifier\n      quantize_embedings: 1\n")


def test_submodule_that_matches_nothing_is_an_error():
    manager = Manager("modifiers:\n  - !QuantizationModifier\n      submodules: [bert.decoder]\n")
    model = make_tiny_model("text-classification")
    with pytest.raises(ModelMatchError, match="bert.decoder"):
        manager.modify(model, torch.optim.SGD(model.parameters(), lr=0.1), 1)
