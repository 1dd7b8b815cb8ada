"""SparseTrainer: recipe epochs and LR, saving, exact resume, teachers, grad sampler, DDP."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
import transformers
from conftest import make_tiny_model, save_tiny_model
from transformers import TrainerCallback, TrainingArguments

from sparseforge.errors import ModelMatchError, SparseforgeError
from sparseforge.manager import ScheduledOptimizer
from sparseforge.recipe import Recipe
from sparseforge.transformers.trainer import (
    CHECKPOINT_MARKER,
    MANAGER_STATE_NAME,
    SparseTrainer,
    check_checkpoint,
    combine_recipes,
    is_sparseforge_checkpoint,
    load_teacher,
)

LR_RECIPE = """
training_modifiers:
  - !EpochRangeModifier {start_epoch: 0.0, end_epoch: 2.0}
  - !LearningRateFunctionModifier {start_epoch: 0.0, end_epoch: 2.0, lr_func: linear, init_lr: 0.01, final_lr: 0.001}
"""
GMP_RECIPE = (
    LR_RECIPE
    + """
pruning_modifiers:
  - !GMPruningModifier
    params: ["re:bert.encoder.layer.*.(intermediate|output).dense.weight"]
    start_epoch: 0.0
    end_epoch: 1.5
    init_sparsity: 0.05
    final_sparsity: 0.6
    update_frequency: 0.25
"""
)


def tiny_dataset(count: int = 24, seq: int = 8, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (count, seq), generator=generator)
    ids[:, 0] = 2
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


class StepRecorder(TrainerCallback):
    def __init__(self):
        self.lrs = []

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        self.lrs.append(optimizer.param_groups[0]["lr"])


def test_recipe_sets_epochs_and_owns_the_learning_rate(tmp_path, caplog):
    recorder = StepRecorder()
    with caplog.at_level(logging.WARNING, logger="sparseforge.transformers.trainer"):
        trainer = SparseTrainer(
            model=make_tiny_model(),
            args=make_args(
                tmp_path / "out", num_train_epochs=5, lr_scheduler_type="cosine", warmup_steps=2
            ),
            train_dataset=tiny_dataset(),
            recipe=LR_RECIPE,
            callbacks=[recorder],
        )
    assert trainer.args.num_train_epochs == 2
    assert "num_train_epochs 5 is replaced by 2" in caplog.text
    trainer.train()
    assert isinstance(trainer.optimizer.optimizer, ScheduledOptimizer)
    spe = trainer.manager_steps_per_epoch()
    assert spe == 6 and len(recorder.lrs) == 12
    # The LR at every step is the recipe's, not the Trainer's cosine/warmup schedule.
    expected = [0.01 + (step / spe) / 2.0 * (0.001 - 0.01) for step in range(12)]
    assert recorder.lrs == pytest.approx(expected, rel=1e-9)


def test_fractional_recipe_stops_where_the_recipe_ends(tmp_path):
    """A 1.5-epoch recipe trains 1.5 epochs (9 of 6-step epochs), not SparseML's ceiling of 2."""
    recorder = StepRecorder()
    recipe = LR_RECIPE.replace("end_epoch: 2.0", "end_epoch: 1.5")
    trainer = SparseTrainer(
        model=make_tiny_model(),
        args=make_args(tmp_path / "out"),
        train_dataset=tiny_dataset(),
        recipe=recipe,
        callbacks=[recorder],
    )
    assert trainer.manager.max_epochs == 2 and trainer.args.num_train_epochs == 1.5
    trainer.train()
    assert trainer.state.global_step == 9 and len(recorder.lrs) == 9
    assert recorder.lrs[-1] == pytest.approx(0.01 + (8 / 6) / 1.5 * (0.001 - 0.01), rel=1e-9)


def test_steps_per_epoch_counts_accumulation_and_drop_last(tmp_path):
    model = make_tiny_model()
    trainer = SparseTrainer(
        model=model,
        args=make_args(tmp_path, gradient_accumulation_steps=2),
        train_dataset=tiny_dataset(26),
        recipe=LR_RECIPE,
    )
    assert trainer.manager_steps_per_epoch() == math.ceil(26 / 8)
    trainer = SparseTrainer(
        model=model,
        args=make_args(tmp_path, dataloader_drop_last=True),
        train_dataset=tiny_dataset(26),
        recipe=LR_RECIPE,
    )
    assert trainer.manager_steps_per_epoch() == 26 // 4


def test_saves_recipe_and_manager_state_and_logs_sparsity(tmp_path):
    out = tmp_path / "out"
    trainer = SparseTrainer(
        model=make_tiny_model(),
        args=make_args(out, save_strategy="epoch"),
        train_dataset=tiny_dataset(),
        recipe=GMP_RECIPE,
    )
    trainer.train()
    trainer.save_model()
    saved = Recipe.load(str(out / "recipe.yaml"))
    assert saved.to_yaml() == trainer.manager.recipe.to_yaml()
    for checkpoint in ("checkpoint-6", "checkpoint-12"):
        assert (out / checkpoint / "recipe.yaml").is_file()
        state = torch.load(out / checkpoint / MANAGER_STATE_NAME, weights_only=True)
        assert state["step"] == int(checkpoint.split("-")[1])
    logged = [entry for entry in trainer.state.log_history if "sparsity/total" in entry]
    assert logged and logged[-1]["sparsity/total"] == pytest.approx(0.6, abs=0.01)
    weight = trainer.model.bert.encoder.layer[0].intermediate.dense.weight
    assert (weight == 0).float().mean().item() == pytest.approx(0.6, abs=0.01)


class ClipRecorder(TrainerCallback):
    """After the Trainer clipped (before the optimizer step): gradients of pruned weights, and
    the norm of all gradients, which max_grad_norm=1e9 (no clipping) leaves as computed."""

    def __init__(self, trainer_ref):
        self.trainer_ref = trainer_ref
        self.pruned_grad_max = []
        self.norms = []

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        trainer = self.trainer_ref[0]
        masks = trainer.manager.modifiers[-1].masks
        if not masks:
            return
        grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        self.pruned_grad_max.append(
            max(
                float(trainer.model.get_parameter(n).grad[~m].abs().max()) for n, m in masks.items()
            )
        )


def test_gradient_clipping_sees_only_live_weights(tmp_path):
    # SparseML masks gradients with tensor hooks, so clipping and the logged grad_norm ignore
    # pruned weights; here the Trainer's own clip (max_grad_norm) must see them already zeroed.
    ref = []
    recorder = ClipRecorder(ref)
    trainer = SparseTrainer(
        model=make_tiny_model(),
        args=make_args(tmp_path / "out", max_grad_norm=1e9),
        train_dataset=tiny_dataset(),
        recipe=GMP_RECIPE,
        callbacks=[recorder],
    )
    ref.append(trainer)
    trainer.train()
    assert recorder.pruned_grad_max and max(recorder.pruned_grad_max) == 0.0
    logged = [entry["grad_norm"] for entry in trainer.state.log_history if "grad_norm" in entry]
    assert logged[-len(recorder.norms) :] == pytest.approx(recorder.norms, rel=1e-4)


def test_saved_recipe_starts_with_what_the_model_already_went_through(tmp_path, tiny_model_dir):
    model_dir = tiny_model_dir("text-classification")
    (model_dir / "recipe.yaml").write_text(
        Recipe.load(
            "pruning_modifiers:\n  - !ConstantPruningModifier {params: __ALL_PRUNABLE__}"
        ).to_yaml()
    )
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(model_dir))
    trainer = SparseTrainer(
        model=model,
        args=make_args(tmp_path / "out"),
        train_dataset=tiny_dataset(),
        recipe=LR_RECIPE,
    )
    combined = trainer.recipe_to_save()
    assert [stage.name for stage in combined.stages] == ["stage_0", "stage_1"]
    assert [m.name for m in combined.modifiers] == [
        "ConstantPruningModifier",
        "EpochRangeModifier",
        "LearningRateFunctionModifier",
    ]
    assert combine_recipes(None, trainer.manager.recipe) is trainer.manager.recipe


class MaskRecorder(TrainerCallback):
    """The masks of the pruning modifier after the last step (finalize clears them)."""

    def __init__(self, trainer_ref):
        self.trainer_ref = trainer_ref
        self.masks = None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == state.max_steps:
            mod = self.trainer_ref[0].manager.modifiers[-1]
            self.masks = {name: mask.clone() for name, mask in mod.masks.items()}


def _run(out, resume=None):
    ref = []
    recorder = MaskRecorder(ref)
    trainer = SparseTrainer(
        model=make_tiny_model(),
        args=make_args(out, save_strategy="steps", save_steps=4, optim="adamw_torch"),
        train_dataset=tiny_dataset(),
        recipe=GMP_RECIPE,
        callbacks=[recorder],
    )
    ref.append(trainer)
    trainer.train(resume_from_checkpoint=resume)
    return trainer, recorder.masks


@pytest.mark.slow
def test_resume_continues_schedule_masks_and_lr_exactly(tmp_path):
    full, full_masks = _run(tmp_path / "full")
    # checkpoint-4 is mid-pruning (epoch 0.67): masks are still changing after it.
    resumed, resumed_masks = _run(
        tmp_path / "resumed", resume=str(tmp_path / "full" / "checkpoint-4")
    )
    assert full_masks is not None and set(full_masks) == set(resumed_masks)
    for name in full_masks:
        assert torch.equal(full_masks[name], resumed_masks[name]), name
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    assert resumed.optimizer.param_groups[0]["lr"] == full.optimizer.param_groups[0]["lr"]
    # A recipe restarted from scratch at checkpoint-4 would give different masks.
    state4 = torch.load(tmp_path / "full" / "checkpoint-4" / MANAGER_STATE_NAME, weights_only=True)
    assert state4["step"] == 4 and state4["modifiers"][-1]["started"]


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.slow
def test_checkpoints_are_complete_and_appear_only_when_complete(tmp_path):
    out = tmp_path / "out"
    trainer = SparseTrainer(
        model=make_tiny_model(),
        args=make_args(out, save_strategy="steps", save_steps=4),
        train_dataset=tiny_dataset(),
        recipe=GMP_RECIPE,
    )
    real_state_dict = trainer.manager.state_dict

    def dies_at_step_8():
        if trainer.state.global_step == 8:
            raise RuntimeError("killed while saving")
        return real_state_dict()

    trainer.manager.state_dict = dies_at_step_8
    with pytest.raises(RuntimeError, match="killed while saving"):
        trainer.train()
    # checkpoint-4 is whole; checkpoint-8 died between the Trainer's files and the recipe state:
    # no checkpoint-8 folder exists, only the hidden staging folder, which nothing resumes from.
    assert sorted(path.name for path in out.glob("checkpoint-*")) == ["checkpoint-4"]
    checkpoint = out / "checkpoint-4"
    for name in (
        "model.safetensors",
        "trainer_state.json",
        "optimizer.pt",
        "recipe.yaml",
        MANAGER_STATE_NAME,
        CHECKPOINT_MARKER,
    ):
        assert (checkpoint / name).is_file(), name
    assert is_sparseforge_checkpoint(checkpoint)
    assert transformers.trainer_utils.get_last_checkpoint(str(out)).endswith("checkpoint-4")
    # The next save of that step clears the leftover; a whole run leaves no staging folder.
    trainer.manager.state_dict = real_state_dict
    trainer.train(resume_from_checkpoint=str(checkpoint))
    assert sorted(path.name for path in out.iterdir() if path.name.startswith(".")) == []
    assert is_sparseforge_checkpoint(out / "checkpoint-8") and is_sparseforge_checkpoint(
        out / "checkpoint-12"
    )


def test_save_total_limit_rotates_only_this_runs_checkpoints(tmp_path):
    out = tmp_path / "out"
    for step in (1, 3):  # the user's own checkpoint folders, older by step than the run's
        (out / f"checkpoint-{step}").mkdir(parents=True)
        (out / f"checkpoint-{step}" / "notes.txt").write_text(f"mine {step}")
    before = _tree(out)
    trainer = SparseTrainer(
        model=make_tiny_model(),
        args=make_args(out, save_strategy="steps", save_steps=2, save_total_limit=1),
        train_dataset=tiny_dataset(),
        recipe=GMP_RECIPE,
    )
    trainer.train()
    assert {
        name: data
        for name, data in _tree(out).items()
        if name.startswith(("checkpoint-1/", "checkpoint-3/"))
    } == before
    assert sorted(path.name for path in out.glob("checkpoint-*")) == [
        "checkpoint-1",
        "checkpoint-12",
        "checkpoint-3",
    ]


def test_end_of_training_keeps_the_best_of_this_runs_checkpoints_and_the_users(tmp_path):
    out = tmp_path / "out"
    (out / "checkpoint-1").mkdir(parents=True)
    (out / "checkpoint-1" / "notes.txt").write_text("mine")
    args = make_args(
        out,
        save_strategy="steps",
        save_steps=4,
        eval_strategy="steps",
        eval_steps=4,
        save_total_limit=1,
        load_best_model_at_end=True,
    )
    trainer = SparseTrainer(
        model=make_tiny_model(),
        args=args,
        train_dataset=tiny_dataset(),
        eval_dataset=tiny_dataset(8, seed=1),
        recipe=GMP_RECIPE,
    )
    trainer.train()
    best = Path(trainer.state.best_model_checkpoint)
    assert best.parent == out and best.is_dir()
    assert sorted(path.name for path in out.glob("checkpoint-*")) == sorted(
        ["checkpoint-1", best.name]
    )
    assert (out / "checkpoint-1" / "notes.txt").read_text() == "mine"


def test_a_users_folder_of_the_same_name_is_not_replaced(tmp_path):
    out = tmp_path / "out"
    (out / "checkpoint-4").mkdir(parents=True)
    (out / "checkpoint-4" / "weights.bin").write_bytes(b"mine")
    trainer = SparseTrainer(
        model=make_tiny_model(),
        args=make_args(out, save_strategy="steps", save_steps=4),
        train_dataset=tiny_dataset(),
        recipe=GMP_RECIPE,
    )
    with pytest.raises(
        SparseforgeError, match="checkpoint-4 exists and was not written by sparseforge"
    ):
        trainer.train()
    assert (out / "checkpoint-4" / "weights.bin").read_bytes() == b"mine"


def _damage(folder: Path, how: str) -> str:
    """Damage a copy of a checkpoint the way a crash or a bad disk would; returns the file named."""
    if how == "no manager state":
        (folder / MANAGER_STATE_NAME).unlink()
        return MANAGER_STATE_NAME
    if how == "truncated weights":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
        return "model.safetensors"
    if how == "no trainer state":
        (folder / "trainer_state.json").unlink()
        return "trainer_state.json"
    if how == "corrupt trainer state":
        (folder / "trainer_state.json").write_text('{"global_step": 4, "log_hist')
        return "trainer_state.json"
    if how == "corrupt manager state":
        data = (folder / MANAGER_STATE_NAME).read_bytes()
        (folder / MANAGER_STATE_NAME).write_bytes(data[: len(data) // 2])
        return MANAGER_STATE_NAME
    if how == "corrupt config":
        (folder / "config.json").write_text('{"architectures": ["Bert')
        return "config.json"
    if how == "truncated optimizer":
        (folder / "optimizer.pt").write_bytes((folder / "optimizer.pt").read_bytes()[:100])
        return "optimizer.pt"
    raise AssertionError(how)


@pytest.mark.slow
@pytest.mark.parametrize(
    "how",
    [
        "no manager state",
        "truncated weights",
        "no trainer state",
        "corrupt trainer state",
        "corrupt manager state",
        "truncated optimizer",
        "corrupt config",
    ],
)
def test_resume_refuses_an_incomplete_or_damaged_checkpoint(tmp_path, how):
    full = tmp_path / "full"
    SparseTrainer(
        model=make_tiny_model(),
        args=make_args(full, save_strategy="steps", save_steps=4, max_steps=4),
        train_dataset=tiny_dataset(),
        recipe=GMP_RECIPE,
    ).train()
    broken = tmp_path / "broken"
    shutil.copytree(full / "checkpoint-4", broken)
    name = _damage(broken, how)
    with pytest.raises(SparseforgeError) as info:
        check_checkpoint(broken, needs_manager_state=True)
    message = str(info.value)
    assert name in message and "\n" not in message
    trainer = SparseTrainer(
        model=make_tiny_model(),
        args=make_args(tmp_path / "resumed"),
        train_dataset=tiny_dataset(),
        recipe=GMP_RECIPE,
    )
    with pytest.raises(SparseforgeError, match=name.replace(".", r"\.")):
        trainer.train(resume_from_checkpoint=str(broken))
    assert trainer.state.global_step == 0  # refused before any step
    assert check_checkpoint(full / "checkpoint-4", needs_manager_state=True)["step"] == 4


def test_teacher_checks_before_training(tmp_path, tiny_model_dir):
    student = make_tiny_model()
    qa_dir = tiny_model_dir("question-answering")
    with pytest.raises(ModelMatchError, match="same head"):
        load_teacher(str(qa_dir), student)
    three_labels = tiny_model_dir("text-classification", name="three", num_labels=3)
    with pytest.raises(ModelMatchError, match="3 labels"):
        load_teacher(str(three_labels), student)
    with pytest.raises(ModelMatchError, match="vocabulary"):
        load_teacher(make_tiny_model(vocab_size=200), student)
    # A module teacher with another label count is caught by the dry run on training examples.
    with pytest.raises(ModelMatchError, match="shape"):
        SparseTrainer(
            model=student,
            args=make_args(tmp_path),
            train_dataset=tiny_dataset(),
            recipe=LR_RECIPE,
            teacher=make_tiny_model(num_labels=3),
        )
    assert load_teacher("disable", student) is None and load_teacher(None, student) is None
    frozen = load_teacher("self", student)
    assert (
        frozen is not student
        and not frozen.training
        and not any(p.requires_grad for p in frozen.parameters())
    )


def test_teacher_is_loaded_once_frozen_and_handed_to_the_modifiers(tmp_path, tiny_model_dir):
    """load_teacher is the one loader: 'disable'/None -> None, 'self' -> a frozen copy, a folder
    -> the saved model frozen in eval mode; the distillation modifiers receive that module."""
    student = make_tiny_model()
    assert load_teacher("disable", student) is None and load_teacher("none", student) is None
    copy_of_student = load_teacher("self", student)
    assert copy_of_student is not student and not copy_of_student.training
    assert all(
        torch.equal(a, b)
        for a, b in zip(copy_of_student.parameters(), student.parameters(), strict=True)
    )
    folder = tiny_model_dir("text-classification", name="teacher", seed=3)
    teacher = load_teacher(str(folder), student)
    saved = make_tiny_model(seed=3)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert torch.equal(teacher.classifier.weight, saved.classifier.weight)
    given = make_tiny_model(seed=4).train()
    assert (
        load_teacher(given, student) is given
        and not given.training
        and not any(p.requires_grad for p in given.parameters())
    )
    trainer = SparseTrainer(
        model=student,
        args=make_args(tmp_path),
        train_dataset=tiny_dataset(),
        recipe=DISTILL_RECIPE,
        teacher=str(folder),
    )
    trainer.create_optimizer()
    assert trainer.manager.modifiers[-1]._teacher is trainer.teacher
    assert torch.equal(trainer.teacher.classifier.weight, saved.classifier.weight)
    plain = SparseTrainer(
        model=make_tiny_model(),
        args=make_args(tmp_path / "p"),
        train_dataset=tiny_dataset(),
        recipe=DISTILL_RECIPE,
    )
    plain.create_optimizer()
    assert (
        plain.teacher is None and plain.manager.modifiers[-1]._teacher is None
    )  # distillation off


DISTILL_RECIPE = (
    LR_RECIPE
    + """
distillation_modifiers:
  - !DistillationModifier {hardness: 1.0, temperature: 2.0, distill_output_keys: [logits]}
"""
)


def test_distillation_with_a_teacher_without_token_type_ids(tmp_path):
    distil = transformers.DistilBertForSequenceClassification(
        transformers.DistilBertConfig(
            vocab_size=make_tiny_model().config.vocab_size,
            dim=32,
            n_layers=1,
            n_heads=2,
            hidden_dim=64,
        )
    )
    data = tiny_dataset().add_column("token_type_ids", [[0] * 8] * 24)
    trainer = SparseTrainer(
        model=make_tiny_model(),
        args=make_args(tmp_path, num_train_epochs=2),
        train_dataset=data,
        recipe=DISTILL_RECIPE,
        teacher=distil,
    )
    trainer.train()
    losses = [
        entry["distillation/teacher_loss"]
        for entry in trainer.state.log_history
        if "distillation/teacher_loss" in entry
    ]
    assert len(losses) == 12 and all(value > 0 for value in losses)
    # hardness 1: the loss the Trainer optimizes is the distillation term alone
    last = [e for e in trainer.state.log_history if "distillation/total_loss" in e][-1]
    assert last["distillation/total_loss"] == pytest.approx(
        last["distillation/teacher_loss"], rel=1e-6
    )


def test_grad_sampler_yields_batches_with_gradients(tmp_path):
    trainer = SparseTrainer(
        model=make_tiny_model(),
        args=make_args(tmp_path),
        train_dataset=tiny_dataset(),
        recipe=LR_RECIPE,
    )
    weight = trainer.model.classifier.weight
    grads = []
    for _ in trainer.grad_sampler(trainer.model, 7):  # more than one pass over 6 batches
        grads.append(weight.grad.clone())
    assert len(grads) == 7 and all(g.abs().sum() > 0 for g in grads)
    assert not torch.equal(grads[0], grads[1])
    assert weight.grad is None


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
    reason="torchrun missing",
)
def test_two_process_ddp_masks_and_projections_identical_and_exact(tmp_path):
    model_dir = save_tiny_model(tmp_path / "model")
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[2] / "src"))
    result = subprocess.run(
        [
            torchrun,
            "--nproc_per_node=2",
            f"--master_port={_free_port()}",
            str(Path(__file__).with_name("ddp_worker.py")),
            str(model_dir),
            str(tmp_path / "out"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads((tmp_path / "out" / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert (
        reports[0]["world_size"] == 2 and reports[0]["steps_per_epoch"] == 3
    )  # ceil(24 / (4 * 2))
    assert reports[0]["mask_digest"] == reports[1]["mask_digest"]
    assert reports[0]["weight_digest"] == reports[1]["weight_digest"]
    # The distillation projections live outside the DDP model: their gradients are averaged too.
    assert reports[0]["projection_count"] == 2
    assert reports[0]["projection_digest"] == reports[1]["projection_digest"]
    for sparsity in reports[0]["sparsity"].values():
        assert sparsity == pytest.approx(0.5, abs=1e-9)
    # 6 steps, a save every 3, --save_total_limit 1: one complete checkpoint with both ranks' rng state.
    out = tmp_path / "out"
    assert sorted(
        path.name for path in out.iterdir() if path.name.startswith((".", "checkpoint-"))
    ) == ["checkpoint-6"]
    checkpoint = out / "checkpoint-6"
    assert is_sparseforge_checkpoint(checkpoint)
    for name in ("rng_state_0.pth", "rng_state_1.pth", MANAGER_STATE_NAME, "model.safetensors"):
        assert (checkpoint / name).is_file(), name
    assert check_checkpoint(checkpoint, needs_manager_state=True)["step"] == 6


def test_best_model_after_epoch_forgets_earlier_bests():
    from types import SimpleNamespace

    from sparseforge.transformers.trainer import _BestModelAfterEpoch

    callback = _BestModelAfterEpoch(2)
    state = SimpleNamespace(
        epoch=1.0, best_metric=0.9, best_global_step=10, best_model_checkpoint="out/checkpoint-10"
    )
    callback.on_evaluate(None, state, None)
    assert state.best_metric == 0.9  # before epoch 2: untouched
    state.epoch = 2.0
    callback.on_evaluate(None, state, None)
    assert (
        state.best_metric is None and state.best_model_checkpoint is None
    )  # this evaluation starts the race
    state.best_metric = 0.5
    state.epoch = 3.0
    callback.on_evaluate(None, state, None)
    assert state.best_metric == 0.5  # reset once only


def test_a_step_based_recipe_sets_the_epochs_to_train(tmp_path):
    """Issue 17: a recipe written in steps used to report end_epoch -1, so the Trainer kept its own."""
    recipe = LR_RECIPE.replace("start_epoch: 0.0, end_epoch: 2.0", "start_step: 0, end_step: 9")
    trainer = SparseTrainer(
        model=make_tiny_model(),
        args=make_args(tmp_path / "out", num_train_epochs=5),
        train_dataset=tiny_dataset(),
        recipe=recipe,
    )
    assert trainer.manager_steps_per_epoch() == 6
    assert trainer.args.num_train_epochs == 1.5  # 9 steps of 6-step epochs
