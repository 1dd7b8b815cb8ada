"""Worker for the 2-process DDP test (launched by torchrun, gloo on CPU): trains a tiny BERT with
a GMP recipe and per-layer distillation with learned projections (teacher: the starting model)
and writes, per rank, a digest of the masks, weights and projections and the final sparsities."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))

from test_trainer import GMP_RECIPE, make_args, tiny_dataset  # noqa: E402
from transformers import AutoModelForSequenceClassification, TrainerCallback  # noqa: E402

from sparseforge.transformers.trainer import SparseTrainer  # noqa: E402

RECIPE = (
    GMP_RECIPE.replace("final_sparsity: 0.6", "final_sparsity: 0.5")
    + """
distillation_modifiers:
  - !PerLayerDistillationModifier
    student_layer_names: [bert.encoder.layer.0, bert.encoder.layer.1]
    project_features: true
"""
)


class Report(TrainerCallback):
    def __init__(self, holder):
        self.holder = holder

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step != state.max_steps:
            return
        trainer = self.holder[0]
        mod = next(m for m in trainer.manager.modifiers if hasattr(m, "masks"))
        projections = hashlib.sha256()
        distill = next(m for m in trainer.manager.modifiers if hasattr(m, "projection_parameters"))
        for param in distill.projection_parameters():
            projections.update(param.detach().cpu().numpy().tobytes())
        masks = hashlib.sha256()
        for name in sorted(mod.masks):
            masks.update(mod.masks[name].cpu().numpy().tobytes())
        weights = hashlib.sha256()
        for _, param in sorted(trainer.model.named_parameters()):
            weights.update(param.detach().cpu().numpy().tobytes())
        sparsity = {
            name: float((trainer.model.get_parameter(name) == 0).float().mean())
            for name in mod.masks
        }
        self.holder.append(
            {
                "world_size": args.world_size,
                "steps_per_epoch": trainer.manager_steps_per_epoch(),
                "mask_digest": masks.hexdigest(),
                "weight_digest": weights.hexdigest(),
                "projection_count": len(distill.projection_parameters()),
                "projection_digest": projections.hexdigest(),
                "sparsity": sparsity,
            }
        )


def main() -> None:
    model_dir, out = sys.argv[1], Path(sys.argv[2])
    holder: list = []
    # Checkpoints too: every rank writes its rng state into the staging folder before rank 0 renames it.
    args = make_args(
        out, ddp_backend="gloo", save_strategy="steps", save_steps=3, save_total_limit=1
    )
    trainer = SparseTrainer(
        model=AutoModelForSequenceClassification.from_pretrained(model_dir),
        args=args,
        train_dataset=tiny_dataset(),
        recipe=RECIPE,
        teacher=model_dir,
        callbacks=[Report(holder)],
    )
    holder.insert(0, trainer)
    trainer.train()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{args.process_index}.json").write_text(json.dumps(holder[1]))


if __name__ == "__main__":
    main()
