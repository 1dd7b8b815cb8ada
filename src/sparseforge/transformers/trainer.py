"""`SparseTrainer`: a `transformers.Trainer` that runs a recipe through its documented hooks.

    create_optimizer      the Trainer's optimizer, wrapped by `manager.modify(...)` so each
                          optimizer step runs the recipe (pruning, LR, quantization...)
    create_scheduler      when the recipe sets the learning rate, a scheduler that never changes
                          it, so the Trainer does not fight the recipe
    compute_loss          the task loss, then `manager.loss_update(loss, student_outputs=...,
                          student_inputs=...)` (distillation)
    _save / save_model    `recipe.yaml` beside the weights: the recipe applied to the starting
                          model (if it had one) followed by this run's evaluated recipe
    _save_checkpoint      the Trainer's checkpoint + `manager_state.pt` (tensors and numbers,
                          read back with weights_only=True) + a marker listing the files, staged
                          in a hidden folder (`_get_output_dir`) and renamed to checkpoint-N/
                          when complete; --save_total_limit rotates only this run's checkpoints
    _load_from_checkpoint checks the checkpoint is complete and undamaged (`check_checkpoint`),
                          then reads the state back, so a resumed run continues schedule, masks, LR
    log                   adds `manager.logs()` (LR, sparsity, distillation losses) to every log

The training loop itself is the Trainer's. The train / evaluate / save / export sequence every
task CLI shares is `sparseforge.transformers.tasks.task_utils.drive`.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import os
import re
import shutil
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from sparseforge.checkpoint import RECIPE_FILE
from sparseforge.errors import ModelMatchError, SparseforgeError
from sparseforge.manager import Manager, ScheduledOptimizer
from sparseforge.recipe import Recipe

logger = logging.getLogger(__name__)

MANAGER_STATE_NAME = "manager_state.pt"
TRAINER_STATE_FILE = "trainer_state.json"
# A checkpoint-N folder sparseforge wrote holds this marker listing its files; others are the user's.
CHECKPOINT_MARKER = "sparseforge_checkpoint.json"
CHECKPOINT_PREFIX = "checkpoint-"
STAGING_PREFIX = ".sparseforge-tmp-"  # checkpoints are written here, then renamed
GENERATOR = "sparseforge"

# Head of each task, by the suffix of the model class name (e.g. BertForSequenceClassification).
TASK_HEADS: dict[str, str] = {
    "text-classification": "ForSequenceClassification",
    "token-classification": "ForTokenClassification",
    "question-answering": "ForQuestionAnswering",
    "masked-language-modeling": "ForMaskedLM",
}


# ----- models ----------------------------------------------------------------------------------
def task_of(model: torch.nn.Module | str) -> str | None:
    """The task a model class (or class name) serves, from its `...For<Head>` suffix."""
    name = model if isinstance(model, str) else type(model).__name__
    for task, suffix in TASK_HEADS.items():
        if name.endswith(suffix):
            return task
    return None


def load_pretrained(path: str, task: str, **config_kwargs: Any) -> torch.nn.Module:
    """Load a model folder for `task`, as students and teachers are loaded.

    A folder saved by sparseforge (it has a `recipe.yaml`) goes through
    `sparseforge.transformers.loading.load_model`, which rebuilds the recipe's structure (e.g.
    QAT modules) before loading the weights strictly. Any other folder - or a sparseforge
    checkpoint of another head, e.g. a pruned masked-LM for sparse transfer - goes through the
    task's Auto class `from_pretrained`, which starts a new head. `config_kwargs` override
    config fields (num_labels, id2label, problem_type...).
    """
    import transformers

    from sparseforge.tasks import AUTO_MODEL_CLASSES, normalize_task
    from sparseforge.transformers.loading import load_model

    task = normalize_task(task)
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise SparseforgeError(f"{path}: not a model folder (no config.json)")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    heads = {task_of(name) for name in config.get("architectures") or []}
    saved_labels = (
        transformers.AutoConfig.from_pretrained(path).num_labels if task in heads else None
    )
    new_head = (
        "num_labels" in config_kwargs
        and task in heads
        and saved_labels not in (None, config_kwargs["num_labels"])
    )
    if new_head:
        logger.warning(
            "%s predicts %s labels, the data has %d: its classifier is replaced by a new one",
            path,
            saved_labels,
            config_kwargs["num_labels"],
        )
    if (folder / RECIPE_FILE).is_file():
        if task in heads and not new_head:
            return load_model(path, task, **config_kwargs)
        logger.info("%s was saved for another head: loading it with a new %s head", path, task)
    auto = getattr(transformers, AUTO_MODEL_CLASSES[task])
    _check_weights(folder)
    try:
        config = transformers.AutoConfig.from_pretrained(path, **config_kwargs)
        return auto.from_pretrained(path, config=config, ignore_mismatched_sizes=new_head)
    except (OSError, ValueError) as err:
        raise SparseforgeError(
            f"cannot load a {task} model from {path}: {str(err).splitlines()[0]}"
        ) from None


NO_TEACHER = ("disable", "none", "")


def teacher_source(teacher: str | os.PathLike | None) -> str | None:
    """`--distill_teacher` at the edge: None for 'disable'/'none'/'' (no distillation), 'self', or
    a local path (a zoo: stub resolved to its model folder)."""
    if teacher is None or str(teacher).strip().lower() in NO_TEACHER:
        return None
    if str(teacher) == "self":
        return "self"
    from sparseforge.zoo import resolve

    return str(resolve(str(teacher), "teacher"))


def load_teacher(
    teacher: torch.nn.Module | str | os.PathLike | None,
    student: torch.nn.Module,
    *,
    task: str | None = None,
    student_tokenizer: Any = None,
) -> torch.nn.Module | None:
    """The distillation teacher, loaded once: a module, a folder / zoo: stub, 'self' (a frozen copy
    of the student as it is now) or 'disable' / None.

    Returns a frozen module in eval mode, or None (no distillation): what the recipe's modifiers
    receive. A teacher that cannot serve the student (another task's head, another label count,
    another vocabulary) is a ModelMatchError here, before any training.
    """
    from sparseforge.modifiers.distillation import resolve_teacher

    if not isinstance(teacher, torch.nn.Module):
        source = teacher_source(teacher)
        if source is None or source == "self":
            return resolve_teacher(source, student)
        teacher = _load_teacher_folder(source, student, task or task_of(student), student_tokenizer)
    _check_teacher_module(teacher, student)
    return resolve_teacher(teacher, student)


def _load_teacher_folder(
    path: str, student: torch.nn.Module, task: str | None, student_tokenizer: Any
) -> torch.nn.Module:
    if not os.path.isdir(path):
        raise ModelMatchError(f"--distill_teacher {path}: not a model folder, 'self' or 'disable'")
    check_teacher_folder(path, task, getattr(getattr(student, "config", None), "num_labels", None))
    teacher = load_pretrained(path, task) if task else _load_any(path)
    _check_teacher_vocab(path, student_tokenizer)
    return teacher


def _check_teacher_module(teacher: Any, student: torch.nn.Module) -> None:
    """Same head and same vocabulary as the student."""
    if not isinstance(teacher, torch.nn.Module):
        raise ModelMatchError(
            f"distillation teacher must be a model, a folder, 'self' or 'disable', got {teacher!r}"
        )
    student_task, teacher_task = task_of(student), task_of(teacher)
    if student_task and teacher_task and student_task != teacher_task:
        raise ModelMatchError(
            f"the teacher is a {teacher_task} model ({type(teacher).__name__}) but the student is a "
            f"{student_task} model ({type(student).__name__}): distillation needs the same head"
        )
    s_vocab = getattr(getattr(student, "config", None), "vocab_size", None)
    t_vocab = getattr(getattr(teacher, "config", None), "vocab_size", None)
    if s_vocab and t_vocab and s_vocab != t_vocab:
        raise ModelMatchError(
            f"the teacher's vocabulary has {t_vocab} tokens, the student's {s_vocab}: the teacher is fed the "
            "student's token ids, so both need the same tokenizer"
        )


def _load_any(path: str) -> torch.nn.Module:
    from transformers import AutoModel

    return AutoModel.from_pretrained(path)


def check_teacher_folder(path: str, task: str | None, num_labels: int | None = None) -> None:
    """Head and label count from a teacher folder's config.json, before loading anything (a wrong
    head would otherwise be silently replaced by a randomly initialised one). Task CLIs call it
    right after parsing so a bad teacher fails before data is read."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise ModelMatchError(
            f"--distill_teacher {path}: not a model folder (no config.json), 'self' or 'disable'"
        )
    config = json.loads(config_file.read_text(encoding="utf-8"))
    architectures = config.get("architectures") or []
    heads = [task_of(name) for name in architectures]
    if task and heads and task not in heads:
        raise ModelMatchError(
            f"--distill_teacher {path} is a {heads[0] or architectures[0]} model ({', '.join(architectures)}), "
            f"the student is {task}: distillation needs the same head"
        )
    if task in ("text-classification", "token-classification") and num_labels is not None:
        t_labels = config.get("num_labels") or len(config.get("id2label") or {}) or 2
        if t_labels != num_labels:
            raise ModelMatchError(
                f"--distill_teacher {path} predicts {t_labels} labels, the student {num_labels}: "
                "their outputs cannot be compared"
            )


def _check_teacher_vocab(path: str, student_tokenizer: Any) -> None:
    if student_tokenizer is None or not hasattr(student_tokenizer, "get_vocab"):
        return
    files = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")
    if not any((Path(path) / name).is_file() for name in files):
        return
    from transformers import AutoTokenizer

    try:
        teacher_tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        return
    if teacher_tokenizer.get_vocab() != student_tokenizer.get_vocab():
        raise ModelMatchError(
            f"--distill_teacher {path} has a different tokenizer vocabulary than the student: the teacher is "
            "fed the student's token ids, so both need the same tokenizer"
        )


def saved_recipe(path: str | os.PathLike | None) -> Recipe | None:
    """The `recipe.yaml` a model folder was saved with, if any."""
    if not path:
        return None
    recipe_file = Path(path) / RECIPE_FILE
    return Recipe.load(str(recipe_file)) if recipe_file.is_file() else None


def combine_recipes(
    applied: Recipe | None, current: Recipe | None, steps_per_epoch: int | None = None
) -> Recipe | None:
    """`applied` (what the starting model went through) then `current`: SparseML's
    `compose_staged`, so the saved recipe holds absolute epochs with `current` after `applied`."""
    if applied is None or current is None:
        return current or applied
    return Recipe.compose_staged(applied, current, steps_per_epoch=steps_per_epoch)


# ----- checkpoints -----------------------------------------------------------------------------
def checkpoint_step(path: str | os.PathLike) -> int | None:
    """N of a `checkpoint-N` folder name, else None."""
    match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", Path(path).name)
    return int(match.group(1)) if match else None


def is_sparseforge_checkpoint(folder: str | os.PathLike) -> bool:
    """A checkpoint folder sparseforge wrote (its marker lists every file in it): only these may be
    auto-resumed, rotated by --save_total_limit or replaced."""
    folder = Path(folder)
    try:
        marker = json.loads((folder / CHECKPOINT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or marker.get("generator") != GENERATOR:
        return False
    return {entry.name for entry in folder.iterdir()} <= set(marker.get("files", []))


def _check_weights(folder: Path) -> None:
    from safetensors import SafetensorError, safe_open

    from sparseforge.checkpoint import weight_files

    for file in weight_files(folder):
        if not file.is_file():
            raise SparseforgeError(f"{file} is missing: the checkpoint is incomplete")
        if file.suffix == ".safetensors":
            try:
                with safe_open(str(file), framework="pt"):
                    pass
            except (SafetensorError, OSError) as err:
                raise SparseforgeError(
                    f"{file} is damaged (truncated or not safetensors: {str(err).splitlines()[0]})"
                ) from None


def _check_archives(folder: Path) -> None:
    """torch.save files are zip archives: a truncated or altered one fails its CRC check here,
    without unpickling anything."""
    for file in sorted([*folder.glob("*.pt"), *folder.glob("*.pth"), *folder.glob("*.bin")]):
        try:
            with zipfile.ZipFile(file) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise SparseforgeError(
                f"{file} is damaged ({err}); resume from an earlier checkpoint"
            ) from None
        if bad is not None:
            raise SparseforgeError(
                f"{file} is damaged (member {bad} fails its checksum); resume from an earlier checkpoint"
            )


def _required_files(folder: Path, needs_manager_state: bool) -> list[str]:
    """The files a resumable checkpoint must hold: the trainer state, the recipe state when a
    recipe runs, and every file the checkpoint's own marker lists (a damaged marker is refused)."""
    required = [TRAINER_STATE_FILE, *([MANAGER_STATE_NAME] if needs_manager_state else [])]
    marker = folder / CHECKPOINT_MARKER
    if marker.is_file():
        try:
            required += [
                name
                for name in json.loads(marker.read_text(encoding="utf-8"))["files"]
                if name != CHECKPOINT_MARKER
            ]
        except (ValueError, KeyError, TypeError):
            raise SparseforgeError(
                f"{marker} is damaged (not the JSON sparseforge writes)"
            ) from None
    return required


def _check_json_files(folder: Path) -> None:
    """The checkpoint's JSON files (trainer state, config) must parse as the objects Hugging Face
    reads back; a truncated one fails here, naming the file, instead of deep inside `train()`."""
    for name in (TRAINER_STATE_FILE, "config.json"):
        if not (folder / name).is_file():
            continue
        try:
            content = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise SparseforgeError(f"{folder / name} is damaged (not JSON: {err})") from None
        if not isinstance(content, dict) or (
            name == TRAINER_STATE_FILE and not isinstance(content.get("global_step"), int)
        ):
            raise SparseforgeError(
                f"{folder / name} is damaged (not the JSON object a checkpoint holds)"
            )


def check_checkpoint(
    path: str | os.PathLike, *, needs_manager_state: bool
) -> dict[str, Any] | None:
    """Refuse to resume from a checkpoint that is incomplete or damaged, naming the file, before
    anything is trained. Returns the recipe state (`manager_state.pt`) when `needs_manager_state`."""
    folder = Path(path)
    if not folder.is_dir():
        raise SparseforgeError(f"--resume_from_checkpoint {folder}: not a folder")
    for name in dict.fromkeys(_required_files(folder, needs_manager_state)):
        if not (folder / name).is_file():
            why = (
                "the recipe's state (schedule, masks) cannot be restored"
                if name == MANAGER_STATE_NAME
                else "the checkpoint is incomplete"
            )
            raise SparseforgeError(
                f"cannot resume from {folder}: {name} is missing ({why}); resume from a complete checkpoint-N"
            )
    _check_json_files(folder)
    _check_weights(folder)
    _check_archives(folder)
    if not needs_manager_state:
        return None
    try:
        manager_state = torch.load(
            folder / MANAGER_STATE_NAME, map_location="cpu", weights_only=True
        )
    except Exception as err:  # noqa: BLE001 - unpickling errors come in many types
        raise SparseforgeError(
            f"{folder / MANAGER_STATE_NAME} is damaged ({type(err).__name__})"
        ) from None
    if not isinstance(manager_state, dict):
        raise SparseforgeError(f"{folder / MANAGER_STATE_NAME} is damaged (not a recipe state)")
    return manager_state


# ----- the trainer ----------------------------------------------------------------------------
class _RecipeOwnsLR(torch.optim.lr_scheduler.LRScheduler):
    """A scheduler that reports the optimizer's current learning rates and never changes them."""

    def get_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]


class _SparseCallback(TrainerCallback):
    """Finalizes the recipe when training ends and logs a sparsity summary."""

    def __init__(self, trainer: SparseTrainer):
        self.trainer = trainer

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer._end_rotation()
        manager = self.trainer.manager
        if manager is not None and manager.state is not None:
            manager.finalize(self.trainer.model)
        summary = sparsity_summary(self.trainer.model)
        if summary and args.should_log:
            logger.info("sparsity at the end of training: %s", summary)


class _BestModelAfterEpoch(TrainerCallback):
    """`--best_model_after_epoch N`: forget best-model records made before epoch N."""

    def __init__(self, epoch: float):
        self.epoch = epoch
        self._reset = False

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.epoch is not None and state.epoch >= self.epoch and not self._reset:
            state.best_metric = None
            state.best_global_step = None
            state.best_model_checkpoint = None
            self._reset = True


def sparsity_summary(model: torch.nn.Module) -> str:
    """One line: total zeros, and the sparse tensors' share ('' when nothing is sparse)."""
    from sparseforge.sparsity import analyze_model

    totals = analyze_model(model).to_dict()["totals"]
    if not totals["sparse_tensors"]:
        return ""
    return (
        f"{totals['sparse_tensors']} sparse tensors holding {totals['sparse_tensor_params']:,} parameters at "
        f"{totals['sparse_tensor_sparsity']:.2%}; {totals['sparsity']:.2%} of all {totals['params']:,} parameters are zero"
    )


class SparseTrainer(Trainer):
    """A Trainer that applies a recipe; see the module docstring for the hooks it overrides.

    Args (besides the Trainer's own):
        recipe: path, YAML text, Recipe or None (plain training).
        recipe_args: variable overrides (dict, JSON, or `k=v,...`).
        teacher: model, folder / zoo: stub, "self" or "disable"/None, for the recipe's distillation
            modifiers; loaded once by `load_teacher` (the modifiers get a frozen module or None).
        applied_recipe: the recipe the starting model went through (default: the `recipe.yaml`
            in the folder the model was loaded from); written first in the saved recipe.yaml.
    """

    def __init__(
        self,
        *args: Any,
        recipe: Any = None,
        recipe_args: str | Mapping[str, Any] | None = None,
        teacher: torch.nn.Module | str | None = None,
        applied_recipe: Recipe | str | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.manager = Manager(recipe, recipe_args) if recipe is not None else None
        if isinstance(applied_recipe, (str, os.PathLike)):
            applied_recipe = Recipe.load(str(applied_recipe))
        if applied_recipe is None:
            applied_recipe = saved_recipe(getattr(self.model, "name_or_path", None))
        self.applied_recipe = applied_recipe
        self.teacher = load_teacher(teacher, self.model, student_tokenizer=self.processing_class)
        if isinstance(self.teacher, torch.nn.Module):
            self.teacher.to(self.args.device)
            self._check_teacher_outputs()
        self._manager_resume_state: dict[str, Any] | None = None
        self._resume_checkpoint: str | None = None
        self._staging_dir: str | None = None
        self._training_ended = False
        self._checkpoints_written: set[Path] = set()
        if self.manager is not None:
            # The task loss and the distillation term are per-batch means: let the Trainer
            # divide by the accumulation steps, and do not pass num_items_in_batch.
            self.loss_is_scaled_for_ga = False
            self._apply_recipe_epochs()
            self.recipe_to_save()  # a stage-name clash with the applied recipe fails now, not at save
        self.add_callback(_SparseCallback(self))

    # ----- setup -----------------------------------------------------------------------------
    def _apply_recipe_epochs(self) -> None:
        # The recipe's own end, not SparseML's ceiling: a 1.5-epoch recipe stops at 1.5 epochs
        # instead of training half an epoch more after every modifier has ended.
        epochs = self.manager.end_epoch_at(self.manager_steps_per_epoch())
        if epochs <= 0:
            return
        if self.args.num_train_epochs != epochs:
            # Warn only when the user chose a number; TrainingArguments' default is not a choice.
            default = next(
                f.default
                for f in dataclasses.fields(type(self.args))
                if f.name == "num_train_epochs"
            )
            report = logger.warning if self.args.num_train_epochs != default else logger.info
            report(
                "the recipe runs %g epochs: num_train_epochs %g is replaced by %g",
                epochs,
                self.args.num_train_epochs,
                epochs,
            )
            self.args.num_train_epochs = epochs
        if self.args.max_steps > 0:
            logger.warning(
                "max_steps=%d overrides the recipe's %g epochs: the recipe may not finish",
                self.args.max_steps,
                epochs,
            )

    def _check_teacher_outputs(self) -> None:
        """Run student and teacher on two training examples: their logits must have one shape."""
        dataset = self.train_dataset if self.train_dataset is not None else self.eval_dataset
        if dataset is None or isinstance(dataset, Mapping) or not hasattr(dataset, "__getitem__"):
            return
        accepted = set(inspect.signature(self.model.forward).parameters) | {
            "label",
            "labels",
            "label_ids",
        }
        try:
            examples = [dataset[i] for i in range(min(2, len(dataset)))]
            examples = [
                {k: v for k, v in ex.items() if k in accepted} for ex in examples
            ]  # as remove_unused_columns
            batch = self._prepare_inputs(self.data_collator(examples))
        except Exception as err:  # noqa: BLE001 - the check is best-effort; training reports real errors
            logger.debug("teacher output check skipped: %s", err)
            return
        from sparseforge.modifiers.distillation import filter_teacher_inputs, output_items

        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                inputs = {k: v for k, v in batch.items() if k not in ("labels",)}
                student = self.model(**inputs)
                teacher = self.teacher(**filter_teacher_inputs(self.teacher, batch, None))
        except Exception as err:  # noqa: BLE001
            raise ModelMatchError(
                f"the distillation teacher cannot run on the student's inputs: {err}"
            ) from None
        finally:
            self.model.train(was_training)
        teacher_items = dict(output_items(teacher, None))
        for key, value in output_items(student, None):
            other = teacher_items.get(key)
            if other is None or other.shape != value.shape:
                raise ModelMatchError(
                    f"the teacher's output '{key}' has shape {None if other is None else tuple(other.shape)}, "
                    f"the student's {tuple(value.shape)}: distillation needs matching outputs"
                )

    def manager_steps_per_epoch(self) -> int:
        """Optimizer steps per epoch: ceil(len(train) / (per-device batch * world size * accumulation))."""
        per_step = (
            self.args.per_device_train_batch_size
            * max(1, self.args.world_size)
            * self.args.gradient_accumulation_steps
        )
        count = len(self.train_dataset) if self.train_dataset is not None else per_step
        steps = count // per_step if self.args.dataloader_drop_last else math.ceil(count / per_step)
        return max(1, steps)

    # ----- documented Trainer hooks -----------------------------------------------------------
    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        if self.manager is None or isinstance(optimizer, ScheduledOptimizer):
            return optimizer
        self.optimizer = self.manager.modify(
            self.model,
            optimizer,
            self.manager_steps_per_epoch(),
            distillation_teacher=self.teacher,
            grad_sampler=self.grad_sampler,
        )
        if self._manager_resume_state is not None:
            self.manager.load_state_dict(self._manager_resume_state)
            self._reload_checkpoint_weights()
            self._manager_resume_state = None
        return self.optimizer

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> Any:
        if (
            self.manager is not None
            and self.manager.controls_learning_rate
            and self.lr_scheduler is None
        ):
            self.lr_scheduler = _RecipeOwnsLR(
                optimizer if optimizer is not None else self.optimizer
            )
            self._created_lr_scheduler = True
            return self.lr_scheduler
        return super().create_scheduler(num_training_steps, optimizer)

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        if self.manager is None or self.manager.state is None or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        student_inputs = dict(inputs)
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True)
        loss = self.manager.loss_update(
            loss, student_outputs=outputs, student_inputs=student_inputs
        )
        return (loss, outputs) if return_outputs else loss

    def training_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.manager is not None and self.manager.state is not None:
            self.manager.mask_gradients()  # before the Trainer clips: pruned weights add no norm
        return loss

    def grad_sampler(self, model: torch.nn.Module, num_batches: int) -> Iterator[None]:
        """For OBS-style pruning: forward + backward of the task loss on `num_batches` training
        batches, yielding after each backward with that batch's gradients in `param.grad`."""
        if self.train_dataset is None:
            raise SparseforgeError(
                "the recipe needs training batches (OBS gradients or QAT calibration) and there is no "
                "training data: pass --train_file (or --dataset_name / --task_name)"
            )
        loader = self.get_train_dataloader()
        was_training = model.training
        model.train()
        done = 0
        try:
            while done < num_batches:
                for batch in loader:
                    model.zero_grad(set_to_none=True)
                    loss = Trainer.compute_loss(self, model, self._prepare_inputs(batch))
                    loss.backward()
                    yield
                    done += 1
                    if done >= num_batches:
                        break
        finally:
            model.zero_grad(set_to_none=True)
            model.train(was_training)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Training-step logs also carry the recipe's scalars; when the recipe owns the LR, the
        logged learning_rate is the one the last step used (the Trainer's lags a step)."""
        if self.manager is not None and "loss" in logs:
            recipe_logs = self.manager.logs()
            if self.manager.controls_learning_rate and "learning_rate" in recipe_logs:
                logs["learning_rate"] = recipe_logs["learning_rate"]
            for key, value in recipe_logs.items():
                logs.setdefault(key, value)
        if (
            "train_runtime" in logs
        ):  # the final training metrics: next comes the end-of-training cleanup
            self._training_ended = True
        super().log(logs, start_time)

    # ----- saving and resuming ----------------------------------------------------------------
    def recipe_to_save(self) -> Recipe | None:
        """What recipe.yaml holds: the starting model's recipe, then this run's."""
        current = self.manager.recipe if self.manager else None
        return combine_recipes(self.applied_recipe, current, self.manager_steps_per_epoch())

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        recipe = self.recipe_to_save()
        if recipe is not None and self.args.should_save:
            recipe.save(Path(output_dir) / RECIPE_FILE)

    def _get_output_dir(self, trial: Any) -> str:
        """While a checkpoint is being written, the Trainer's run folder is the staging folder;
        once training has ended, a folder that does not exist, so that the Trainer's end-of-training
        cleanup (`save_total_limit == 1`: delete every checkpoint-* but the best) finds nothing
        and `_end_rotation` does it for this run's checkpoints only."""
        if self._staging_dir is not None:
            return self._staging_dir
        run_dir = super()._get_output_dir(trial)
        return str(Path(run_dir) / f"{STAGING_PREFIX}none") if self._training_ended else run_dir

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        """The Trainer's checkpoint, written into a hidden staging folder beside it together with
        `manager_state.pt` and the marker, then renamed to `checkpoint-N`: a checkpoint folder
        exists only complete. Rotation (`--save_total_limit`) deletes only checkpoints this run
        (or the run it resumed) wrote."""
        run_dir = Path(self._get_output_dir(trial))
        name = f"{CHECKPOINT_PREFIX}{self.state.global_step}"
        final, staging_root = run_dir / name, run_dir / f"{STAGING_PREFIX}{name}"
        if (
            final.exists()
            and final not in self._checkpoints_written
            and not is_sparseforge_checkpoint(final)
        ):
            raise SparseforgeError(
                f"{final} exists and was not written by sparseforge: it is not replaced; move it or choose another --output_dir"
            )
        if self.args.should_save and staging_root.exists():
            shutil.rmtree(staging_root)  # left by a run killed while saving
        self.accelerator.wait_for_everyone()
        self._staging_dir = str(staging_root)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_dir = None
        self.accelerator.wait_for_everyone()  # every process has written its part (e.g. rng state)
        staged = staging_root / name
        if self.state.best_model_checkpoint == str(staged):
            self.state.best_model_checkpoint = str(final)
            if self.args.should_save:
                self.state.save_to_json(str(staged / TRAINER_STATE_FILE))
        if not self.args.should_save:
            return
        if self.manager is not None and self.manager.state is not None:
            torch.save(self.manager.state_dict(), staged / MANAGER_STATE_NAME)
        files = sorted(entry.name for entry in staged.iterdir())
        marker = {
            "generator": GENERATOR,
            "step": self.state.global_step,
            "files": [*files, CHECKPOINT_MARKER],
        }
        (staged / CHECKPOINT_MARKER).write_text(
            json.dumps(marker, indent=2) + "\n", encoding="utf-8"
        )
        if (
            final.exists()
        ):  # this run's own checkpoint of the same step (e.g. saved again after resuming)
            shutil.rmtree(final)
        os.replace(staged, final)
        staging_root.rmdir()
        self._checkpoints_written.add(final)
        self._rotate_own_checkpoints(run_dir)

    def _own_checkpoints(self, run_dir: Path) -> list[Path]:
        """This run's checkpoints in `run_dir` (and those of the run it resumed there), oldest first."""
        own = [
            path
            for path in run_dir.glob(f"{CHECKPOINT_PREFIX}*")
            if path.is_dir()
            and checkpoint_step(path) is not None
            and (
                path in self._checkpoints_written
                or (self._resumed_lineage(run_dir) and is_sparseforge_checkpoint(path))
            )
        ]
        return sorted(own, key=checkpoint_step)

    def _end_rotation(self) -> None:
        """At the end of training with `save_total_limit == 1` and a best model, keep only the best
        of this run's checkpoints (the Trainer's rule, limited to what this run wrote)."""
        self._training_ended = False
        best = self.state.best_model_checkpoint
        if not (self.args.should_save and best and self.args.save_total_limit == 1):
            return
        for path in self._own_checkpoints(Path(self._get_output_dir(None))):
            if path.resolve() != Path(best).resolve():
                logger.info("deleting checkpoint %s (--save_total_limit 1 keeps the best)", path)
                shutil.rmtree(path, ignore_errors=True)

    def _rotate_own_checkpoints(self, run_dir: Path) -> None:
        """`--save_total_limit`: keep the newest checkpoints of this run (and of the run it resumed
        from) and the best one; a checkpoint-N folder sparseforge did not write is never deleted."""
        limit = self.args.save_total_limit
        if not limit or limit <= 0:
            return
        own = self._own_checkpoints(run_dir)
        protected = {own[-1]} if own else set()
        if self.state.best_model_checkpoint:
            protected.add(Path(self.state.best_model_checkpoint))
        excess = len(own) - max(limit, len(protected))
        for path in own:
            if excess <= 0:
                break
            if path not in protected:
                logger.info("deleting older checkpoint %s (--save_total_limit %d)", path, limit)
                shutil.rmtree(path, ignore_errors=True)
                excess -= 1

    def _resumed_lineage(self, run_dir: Path) -> bool:
        """Whether this run resumed from a checkpoint in `run_dir`: its older checkpoints are this
        training's too, and rotate as they would have without the interruption."""
        return (
            self._resume_checkpoint is not None
            and Path(self._resume_checkpoint).resolve().parent == run_dir.resolve()
        )

    def _load_from_checkpoint(
        self, resume_from_checkpoint: str, model: torch.nn.Module | None = None
    ) -> None:
        state = check_checkpoint(
            resume_from_checkpoint, needs_manager_state=self.manager is not None
        )
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._resume_checkpoint = str(resume_from_checkpoint)
        if self.manager is not None:
            self._manager_resume_state = state

    def _reload_checkpoint_weights(self) -> None:
        """After the modifiers restored their state (which may add structure such as fake-quant
        modules), load the checkpoint's weights again so every tensor is the saved one."""
        from sparseforge.checkpoint import load_state_dict

        if self._resume_checkpoint is None:
            return
        state = load_state_dict(self._resume_checkpoint, device=str(self.args.device))
        self.model.load_state_dict(state, strict=False)


# ----- pieces of the run every task CLI shares (driven by tasks/task_utils.py) -----------------
def one_shot(trainer: SparseTrainer) -> None:
    """Apply the recipe's end state at once, without training (`--one_shot`)."""
    manager = trainer.manager
    if manager is None:
        raise SparseforgeError("--one_shot needs --recipe")
    manager.apply(trainer.model, distillation_teacher=None, grad_sampler=trainer.grad_sampler)


def export_onnx(
    model_dir: str | os.PathLike,
    export_dir: str | os.PathLike,
    task: str,
    sequence_length: int | None = None,
    num_samples: int = 0,
) -> Path:
    """`--onnx_export_path`: export the saved model folder with `sparseforge.export.to_onnx`
    (verified against PyTorch; an ExportError otherwise)."""
    from sparseforge.export import to_onnx

    kwargs: dict[str, Any] = {"output_dir": str(export_dir), "overwrite": False}
    if sequence_length:
        kwargs["sequence_length"] = sequence_length
    if num_samples > 0:
        kwargs["num_samples"] = num_samples
    return to_onnx(str(model_dir), task, **kwargs)


def best_model_after_epoch(epoch: float) -> TrainerCallback:
    """`--best_model_after_epoch N`: the callback that forgets best-model records before epoch N."""
    return _BestModelAfterEpoch(epoch)
