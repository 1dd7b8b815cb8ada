"""Saved tiny checkpoints for the export tests: dense, 70%-pruned, and QAT (pruned) models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_tiny_model, write_tokenizer

from sparseforge import Manager

QAT_RECIPE = """
modifiers:
  - !ConstantPruningModifier
      start_epoch: 0.0
      params: ['re:bert.encoder.*weight']
  - !QuantizationModifier
      start_epoch: 0.0
      disable_quantization_observer_epoch: 1.0
      quantize_embeddings: 1
      quantize_linear_activations: 0
      exclude_module_types: ['LayerNorm', 'Tanh']
      submodules: [bert.embeddings, bert.encoder, {head}]
"""
# The same recipe in the scheme form, with per-output-channel weight scales (activations per
# tensor, the default) in place of the legacy fields.
PER_CHANNEL_QAT_RECIPE = QAT_RECIPE.replace(
    "      quantize_embeddings: 1\n      quantize_linear_activations: 0\n      exclude_module_types: ['LayerNorm', 'Tanh']\n",
    "      scheme: {{weights: {{num_bits: 8, symmetric: true, strategy: channel}}}}\n",
)
HEADS = {"text-classification": "classifier", "question-answering": "qa_outputs"}


def prune_encoder_(model: torch.nn.Module, sparsity: float = 0.7) -> None:
    """Zero the smallest `sparsity` of every encoder weight matrix."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("bert.encoder") and param.dim() == 2:
                threshold = param.abs().flatten().kthvalue(int(sparsity * param.numel())).values
                param[param.abs() <= threshold] = 0.0


def _batch(model: torch.nn.Module, step: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(step)
    ids = torch.randint(5, model.config.vocab_size, (8, 16), generator=generator)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if "qa_outputs" in dict(model.named_children()):
        batch["start_positions"] = torch.randint(0, 16, (8,), generator=generator)
        batch["end_positions"] = torch.randint(0, 16, (8,), generator=generator)
    else:
        batch["labels"] = torch.randint(0, 2, (8,), generator=generator)
    return batch


def save_qat_model(directory: Path, task: str, steps: int = 6, recipe: str = QAT_RECIPE) -> Path:
    """Prune to 70%, run QAT (observers frozen after epoch 1), save weights + recipe + tokenizer."""
    model = make_tiny_model(task).train()
    prune_encoder_(model)
    manager = Manager(recipe.format(head=HEADS[task]))
    optimizer = manager.modify(
        model, torch.optim.AdamW(model.parameters(), lr=1e-3), steps_per_epoch=3
    )
    for step in range(steps):
        loss = manager.loss_update(model(**_batch(model, step)).loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    manager.finalize(model)
    model.eval()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory))
    write_tokenizer(directory)
    manager.recipe.save(directory / "recipe.yaml")
    return directory


@pytest.fixture(scope="session")
def qat_model_dir(tmp_path_factory):
    """qat_model_dir(task, per_channel=False) -> folder of a pruned + QAT tiny model (built once each)."""
    cache: dict[str, Path] = {}

    def factory(task: str = "text-classification", per_channel: bool = False) -> Path:
        key = f"{task}{'-per-channel' if per_channel else ''}"
        if key not in cache:
            recipe = PER_CHANNEL_QAT_RECIPE if per_channel else QAT_RECIPE
            cache[key] = save_qat_model(tmp_path_factory.mktemp("qat") / key, task, recipe=recipe)
        return cache[key]

    return factory


@pytest.fixture
def pruned_model_dir(tmp_path):
    model = make_tiny_model("text-classification", num_hidden_layers=1)
    prune_encoder_(model)
    directory = tmp_path / "pruned"
    model.save_pretrained(str(directory))
    write_tokenizer(directory)
    return directory
