"""Every recipe sparseforge ships loads, has the shape its stub promises, and fits a BERT of its task."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_tiny_model

from sparseforge import Recipe, zoo

SHIPPED = sorted(zoo.SHIPPED_ROOT.rglob("recipe.md"))

# The stubs the sparse transfer guide's commands use, and the task (model head) each one trains.
GUIDE_TASKS = {
    "question_answering/obert-base/pytorch/huggingface/squad": "question-answering",
    "text_classification/obert-base/pytorch/huggingface/qqp": "text-classification",
    "text_classification/obert-base/pytorch/huggingface/mnli": "text-classification",
    "multilabel_text_classification/obert-base/pytorch/huggingface/goemotions": "text-classification",
    "sentiment_analysis/obert-base/pytorch/huggingface/sst2": "text-classification",
    "document_classification/obert-base/pytorch/huggingface/imdb": "text-classification",
    "token_classification/obert-base/pytorch/huggingface/conll2003": "token-classification",
}
DEMO = "zoo:nlp/text_classification/minilm-l6/pytorch/huggingface/bbc_news/pruned80_quant-none"
DEMO_DENSE = "zoo:nlp/text_classification/minilm-l6/pytorch/huggingface/bbc_news/base-none"
# structured (heads / FFN neurons removed) + INT8 transfer of MiniLM; tested in test_recipes_structured.py
STRUCTURED = (
    "zoo:nlp/text_classification/minilm-l6/pytorch/huggingface/bbc_news/structured_quant-none",
    "zoo:nlp/sentiment_analysis/minilm-l6/pytorch/huggingface/sst2/structured_quant-none",
)
OUTPUT_KEYS = {"question-answering": ["start_logits", "end_logits"], "text-classification": ["logits"], "token-classification": ["logits"]}


def stub_of(path: Path) -> str:
    return "zoo:" + "/".join(path.parent.relative_to(zoo.SHIPPED_ROOT).parts)


def names(recipe: Recipe) -> list[str]:
    return sorted(mod.name for mod in recipe.modifiers)


def test_every_guide_stub_is_shipped():
    shipped = {stub_of(path) for path in SHIPPED}
    expected = {f"zoo:nlp/{key}/{variant}" for key in GUIDE_TASKS for variant in ("base-none", "pruned90_quant-none")}
    assert expected | {DEMO, DEMO_DENSE} | set(STRUCTURED) == shipped


@pytest.mark.parametrize("path", SHIPPED, ids=stub_of)
def test_shipped_recipe_loads_and_resolves(path):
    stub = stub_of(path)
    assert Path(zoo.resolve_recipe(stub)) == path.resolve()
    recipe = Recipe.load(zoo.resolve_recipe(stub))
    assert recipe.max_epochs == recipe.variables["num_epochs"]
    assert "written for this project" in path.read_text()
    # the evaluated recipe round-trips through YAML
    assert Recipe.load(recipe.to_yaml()).to_yaml() == recipe.to_yaml()


@pytest.mark.parametrize("key", sorted(GUIDE_TASKS))
def test_dense_recipe_is_epochs_and_lr_only(key):
    recipe = Recipe.load(zoo.resolve_recipe(f"zoo:nlp/{key}/base-none"))
    assert names(recipe) == ["EpochRangeModifier", "LearningRateFunctionModifier"]
    lr = recipe.modifiers_of(type(recipe.modifiers[1]))[0]
    assert lr.lr_func == "linear" and lr.final_lr == 0.0 and 0 < lr.init_lr < 1e-3


@pytest.mark.parametrize("key", sorted(GUIDE_TASKS))
def test_sparse_transfer_recipe_shape(key):
    recipe = Recipe.load(zoo.resolve_recipe(f"zoo:nlp/{key}/pruned90_quant-none"))
    assert names(recipe) == sorted(
        [
            "ConstantPruningModifier",
            "DistillationModifier",
            "EpochRangeModifier",
            "LearningRateFunctionModifier",
            "QuantizationModifier",
            "SetWeightDecayModifier",
        ]
    )
    by_name = {mod.name: mod for mod in recipe.modifiers}
    assert by_name["ConstantPruningModifier"].params == "__ALL_PRUNABLE__"
    quant = by_name["QuantizationModifier"]
    num_epochs = recipe.variables["num_epochs"]
    # QAT over the final epochs only, observers frozen before the end
    assert 0 < quant.start_epoch < quant.disable_quantization_observer_epoch < num_epochs
    assert by_name["DistillationModifier"].distill_output_keys == OUTPUT_KEYS[GUIDE_TASKS[key]]
    assert by_name["SetWeightDecayModifier"].weight_decay == pytest.approx(0.01)


@pytest.mark.parametrize("key", sorted(GUIDE_TASKS))
def test_sparse_transfer_recipe_fits_a_bert_of_its_task(key):
    import torch

    from sparseforge import Manager

    task = GUIDE_TASKS[key]
    model = make_tiny_model(task).train()
    teacher = make_tiny_model(task, seed=1)
    manager = Manager.from_recipe(zoo.resolve_recipe(f"zoo:nlp/{key}/pruned90_quant-none"))
    optimizer = manager.modify(model, torch.optim.AdamW(model.parameters()), steps_per_epoch=2, distillation_teacher=teacher)
    assert optimizer is not None


def test_demo_recipe_prunes_to_80_with_qat_and_distillation():
    import torch

    from sparseforge import Manager

    recipe = Recipe.load(zoo.resolve_recipe(DEMO))
    by_name = {mod.name: mod for mod in recipe.modifiers}
    assert set(by_name) >= {"GMPruningModifier", "QuantizationModifier", "DistillationModifier"}
    gmp = by_name["GMPruningModifier"]
    assert gmp.final_sparsity == pytest.approx(0.8)
    assert gmp.end_epoch <= by_name["QuantizationModifier"].start_epoch < recipe.max_epochs
    # its parameter patterns match a BERT-architecture classifier (all-MiniLM-L6-v2 is one)
    model = make_tiny_model("text-classification").train()
    manager = Manager.from_recipe(recipe)
    manager.modify(model, torch.optim.AdamW(model.parameters()), steps_per_epoch=2, distillation_teacher=make_tiny_model())
