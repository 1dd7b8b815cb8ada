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
# the seed recipe itself (Neural Magic's, Apache-2.0, front matter unmodified) and the CoNLL recipe
# bench/bench_tasks.py measured on MiniLM
SEED = "zoo:nlp/question_answering/bert-base/pytorch/huggingface/squad/pruned70_block4_quant-none"
CONLL_MINILM = (
    "zoo:nlp/token_classification/minilm-l6/pytorch/huggingface/conll2003/pruned80_quant-none"
)
OUTPUT_KEYS = {
    "question-answering": ["start_logits", "end_logits"],
    "text-classification": ["logits"],
    "token-classification": ["logits"],
}


def stub_of(path: Path) -> str:
    return "zoo:" + "/".join(path.parent.relative_to(zoo.SHIPPED_ROOT).parts)


def names(recipe: Recipe) -> list[str]:
    return sorted(mod.name for mod in recipe.modifiers)


def test_every_guide_stub_is_shipped():
    shipped = {stub_of(path) for path in SHIPPED}
    expected = {
        f"zoo:nlp/{key}/{variant}"
        for key in GUIDE_TASKS
        for variant in ("base-none", "pruned90_quant-none")
    }
    assert expected | {DEMO, DEMO_DENSE, SEED, CONLL_MINILM} | set(STRUCTURED) == shipped


@pytest.mark.parametrize("path", SHIPPED, ids=stub_of)
def test_shipped_recipe_loads_and_resolves(path):
    stub = stub_of(path)
    assert Path(zoo.resolve_recipe(stub)) == path.resolve()
    recipe = Recipe.load(zoo.resolve_recipe(stub))
    assert recipe.max_epochs == recipe.variables["num_epochs"]
    text = path.read_text()
    assert "written for this project" in text or (
        stub == SEED and "Copyright (c) 2021 - present / Neuralmagic" in text
    )
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


def test_the_seed_stub_is_the_seed_and_scales_through_its_variables():
    """70% [1,4] GMP on the encoder, QAT, distillation; recipe_args reach its `*aliases`."""
    recipe = Recipe.load(zoo.resolve_recipe(SEED))
    by_name = {mod.name: mod for mod in recipe.modifiers}
    gmp = by_name["GMPruningModifier"]
    assert (gmp.final_sparsity, gmp.mask_type, gmp.start_epoch, gmp.end_epoch) == (
        0.7,
        [1, 4],
        2.0,
        20.0,
    )
    assert recipe.max_epochs == 40
    scaled = Recipe.load(
        zoo.resolve_recipe(SEED),
        {
            "num_epochs": 0.5,
            "pruning_start_epoch": 0.025,
            "pruning_end_epoch": 0.25,
            "quantization_start_epoch": 0.375,
            "qat_freeze_epoch": 0.4375,
        },
    )
    by_name = {mod.name: mod for mod in scaled.modifiers}
    assert (by_name["GMPruningModifier"].start_epoch, by_name["GMPruningModifier"].end_epoch) == (
        0.025,
        0.25,
    )
    quant = by_name["QuantizationModifier"]
    assert (quant.start_epoch, quant.disable_quantization_observer_epoch) == (0.375, 0.4375)
    assert scaled.modifiers[0].end_epoch == 0.5


def one_training_step(manager, model, teacher, task):
    """modify() then one step of real training through the manager; returns (optimizer, task loss, recipe loss)."""
    import torch

    optimizer = manager.modify(
        model,
        torch.optim.AdamW(model.parameters(), lr=1.0, weight_decay=0.0),
        steps_per_epoch=2,
        distillation_teacher=teacher,
    )
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "input_ids": torch.randint(5, 100, (2, 8), generator=generator),
        "attention_mask": torch.ones(2, 8, dtype=torch.long),
    }
    if task == "question-answering":
        inputs |= {"start_positions": torch.tensor([1, 2]), "end_positions": torch.tensor([3, 4])}
    elif task == "token-classification":
        inputs["labels"] = torch.randint(0, 2, (2, 8), generator=generator)
    else:
        inputs["labels"] = torch.tensor([0, 1])
    outputs = model(**inputs)
    loss = manager.loss_update(outputs.loss, student_outputs=outputs, student_inputs=inputs)
    loss.backward()
    optimizer.step()
    return optimizer, outputs.loss.detach(), loss.detach()


def prune_a_quarter(model):
    """Zero the first quarter of rows of every prunable weight; returns {name: mask of zeros}."""
    import torch

    from sparseforge.modifiers.selection import prunable_parameter_names

    params = dict(model.named_parameters())
    zeros = {}
    with torch.no_grad():
        for name in prunable_parameter_names(model):
            if params[name].shape[0] < 4:  # e.g. a 2-label classifier
                continue
            params[name][: params[name].shape[0] // 4] = 0
            zeros[name] = params[name] == 0
    return zeros


@pytest.mark.parametrize("key", sorted(GUIDE_TASKS))
def test_sparse_transfer_recipe_fits_a_bert_of_its_task(key):
    """modify() accepts a BERT of the recipe's task, and one step does what the recipe says:
    pruned weights stay zero, weight decay and the learning rate are set, distillation replaces the loss."""
    from sparseforge import Manager

    task = GUIDE_TASKS[key]
    model = make_tiny_model(task).train()
    teacher = make_tiny_model(task, seed=1)
    zeros = prune_a_quarter(model)
    recipe = Recipe.load(zoo.resolve_recipe(f"zoo:nlp/{key}/pruned90_quant-none"))
    optimizer, task_loss, loss = one_training_step(Manager(recipe), model, teacher, task)
    params = dict(model.named_parameters())
    for name, was_zero in zeros.items():  # lr 1.0 would have moved every weight that trains
        assert params[name][was_zero].abs().max() == 0, name
        assert (params[name][~was_zero] != 0).all(), name
    assert [group["weight_decay"] for group in optimizer.param_groups] == [
        pytest.approx(recipe.variables["weight_decay"])
    ] * len(optimizer.param_groups)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(recipe.variables["init_lr"])
    assert recipe.variables["distill_hardness"] == 1.0 and loss != pytest.approx(
        task_loss.item()
    )  # teacher-only loss


def test_demo_recipe_prunes_to_80_with_qat_and_distillation():
    recipe = Recipe.load(zoo.resolve_recipe(DEMO))
    by_name = {mod.name: mod for mod in recipe.modifiers}
    assert set(by_name) >= {"GMPruningModifier", "QuantizationModifier", "DistillationModifier"}
    gmp = by_name["GMPruningModifier"]
    assert gmp.final_sparsity == pytest.approx(0.8)
    assert gmp.end_epoch <= by_name["QuantizationModifier"].start_epoch < recipe.max_epochs
    # its parameter patterns match a BERT-architecture classifier (all-MiniLM-L6-v2 is one), and its first
    # step prunes those weights to init_sparsity and leaves the others dense
    from sparseforge import Manager

    model = make_tiny_model("text-classification").train()
    one_training_step(Manager(recipe), model, make_tiny_model(seed=1), "text-classification")
    pruned = [
        name
        for name, _ in model.named_parameters()
        if "encoder.layer" in name
        and (
            name.endswith("dense.weight") or ("attention.self" in name and name.endswith(".weight"))
        )
    ]
    assert (
        len(pruned) == 2 * 6
    )  # 2 layers x (query, key, value, attention output, intermediate, output)
    for name, param in model.named_parameters():
        sparsity = float((param == 0).float().mean())
        if name in pruned:
            assert sparsity == pytest.approx(recipe.variables["init_sparsity"], abs=0.02), name
        elif param.dim() == 2:  # other weight matrices stay dense (biases start at zero in BERT)
            assert sparsity < 0.01, name
