"""SparseTrainer with GroupPruningModifier: compaction mid-training, checkpoints, reload."""

from __future__ import annotations

import json

import datasets
import torch
from conftest import make_tiny_model
from transformers import TrainingArguments

from sparseforge.transformers.loading import load_model
from sparseforge.transformers.trainer import SparseTrainer

RECIPE = """
training_modifiers:
  - !EpochRangeModifier {start_epoch: 0.0, end_epoch: 2.0}
  - !LearningRateFunctionModifier {start_epoch: 0.0, end_epoch: 2.0, lr_func: linear, init_lr: 0.01, final_lr: 0.001}
pruning_modifiers:
  - !GroupPruningModifier
    start_epoch: 0.0
    end_epoch: 1.0
    update_frequency: 0.25
    final_sparsity: {heads: 0.5, neurons: 0.5}
"""
PER_LAYER = """
distillation_modifiers:
  - !PerLayerDistillationModifier
    gain: 1.0
    student_layer_names: [bert.encoder.layer.0, bert.encoder.layer.1]
"""


def tiny_dataset(count: int = 24, seq: int = 8):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 60, (count, seq), generator=generator)
    labels = (ids[:, 1] % 2).tolist()
    return datasets.Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": [[1] * seq] * count, "labels": labels}
    )


def make_args(output_dir, **overrides) -> TrainingArguments:
    values = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        num_train_epochs=2,
        learning_rate=1e-3,
        save_strategy="no",
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
        dataloader_pin_memory=False,
    )
    values.update(overrides)
    return TrainingArguments(**values)


def test_trainer_compacts_at_end_epoch_and_the_saved_model_reloads(tmp_path):
    out = tmp_path / "out"
    model = make_tiny_model(num_attention_heads=4)
    trainer = SparseTrainer(
        model=model,
        args=make_args(out, save_strategy="epoch"),
        train_dataset=tiny_dataset(),
        recipe=RECIPE + PER_LAYER,
        teacher=make_tiny_model(seed=1, num_attention_heads=4),
    )
    trainer.train()
    trainer.save_model()
    heads = [
        layer.attention.self.query.out_features // 8 for layer in trainer.model.bert.encoder.layer
    ]
    assert sum(heads) == 4
    assert (
        sum(layer.intermediate.dense.out_features for layer in trainer.model.bert.encoder.layer)
        == 64
    )
    logged = [entry for entry in trainer.state.log_history if "distillation/layer_loss" in entry]
    assert logged  # per-layer distillation ran alongside structured pruning
    config = json.loads((out / "config.json").read_text())
    assert sum(len(h) for h in config["sparseforge_structure"]["heads"]) == 4
    assert sum(config["sparseforge_structure"]["neurons"]) == 64
    ids = torch.randint(5, 60, (3, 8))
    loaded = load_model(out, "text-classification")
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(input_ids=ids).logits, trainer.model(input_ids=ids).logits, atol=1e-6, rtol=0
        )
    # the epoch-2 checkpoint (after compaction) reloads too
    loaded = load_model(out / "checkpoint-12", "text-classification")
    assert loaded.bert.encoder.layer[0].intermediate.dense.out_features < 64
