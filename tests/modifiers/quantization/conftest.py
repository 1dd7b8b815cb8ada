"""QAT helpers for the quantization tests: a manager-driven training loop on tiny BERT models."""

from __future__ import annotations

import pytest
import torch

from sparseforge import Manager

LEGACY_RECIPE = """
quantization_modifiers:
  - !QuantizationModifier
      start_epoch: {start}
      disable_quantization_observer_epoch: {freeze}
      freeze_bn_stats_epoch: {freeze}
      quantize_embeddings: 1
      quantize_linear_activations: 0
      exclude_module_types: ['LayerNorm', 'Tanh']
      submodules: {submodules}
"""


def task_batch(
    model: torch.nn.Module, seed: int, batch: int = 4, length: int = 12
) -> dict[str, torch.Tensor]:
    """Random token ids (and labels for the model's task) that every tiny model accepts."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, model.config.vocab_size, (batch, length), generator=generator)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    name = type(model).__name__
    if name.endswith("QuestionAnswering"):
        inputs["start_positions"] = torch.randint(0, length, (batch,), generator=generator)
        inputs["end_positions"] = torch.randint(0, length, (batch,), generator=generator)
    elif name.endswith("TokenClassification"):
        inputs["labels"] = torch.randint(
            0, model.config.num_labels, (batch, length), generator=generator
        )
    elif name.endswith("MaskedLM"):
        inputs["labels"] = ids.clone()
    else:
        inputs["labels"] = torch.randint(0, model.config.num_labels, (batch,), generator=generator)
    return inputs


def run_training(
    model: torch.nn.Module, recipe: str, steps: int, steps_per_epoch: int = 4, callback=None
) -> Manager:
    """Train `model` for `steps` optimizer steps under `recipe`; `callback(step, manager)` after each."""
    model.train()
    manager = Manager(recipe)
    optimizer = manager.modify(
        model, torch.optim.AdamW(model.parameters(), lr=1e-3), steps_per_epoch
    )
    for step in range(steps):
        outputs = model(**task_batch(model, step))
        loss = manager.loss_update(outputs.loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if callback is not None:
            callback(step, manager)
    return manager


@pytest.fixture
def qat_recipe():
    def factory(
        start: float = 1.0,
        freeze: float = 2.0,
        submodules: str = "[bert.embeddings, bert.encoder, classifier]",
    ):
        return LEGACY_RECIPE.format(start=start, freeze=freeze, submodules=submodules)

    return factory


@pytest.fixture
def train():
    """run_training(model, recipe, steps, steps_per_epoch=4, callback=None) -> Manager."""
    return run_training


@pytest.fixture
def make_batch():
    """task_batch(model, seed, batch=4, length=12) -> inputs with labels."""
    return task_batch
