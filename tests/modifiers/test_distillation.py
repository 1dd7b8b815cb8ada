"""DistillationModifier / PerLayerDistillationModifier: SparseML's formulas on hand-made values."""

from __future__ import annotations

import math

import pytest
import torch

from sparseforge.errors import ModelMatchError, RecipeError
from sparseforge.manager import Manager
from sparseforge.modifiers.distillation import (
    DistillationModifier,
    filter_teacher_inputs,
    kl_logsoftmax,
)
from sparseforge.recipe import Recipe


def _softmax(row, temperature):
    exps = [math.exp(v / temperature) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def _hand_kl(student_rows, teacher_rows, temperature):
    """Per-row KL(softmax(t/T) || softmax(s/T)) * T^2, averaged over rows, in plain Python."""
    total = 0.0
    for s_row, t_row in zip(student_rows, teacher_rows, strict=True):
        p, q = _softmax(t_row, temperature), _softmax(s_row, temperature)
        total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    return total * temperature**2 / len(student_rows)


STUDENT = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
TEACHER = [[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]]


class Fixed(torch.nn.Module):
    """A 'teacher' returning fixed logits, and recording what it was fed."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits)
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.seen = None

    def forward(self, input_ids=None, attention_mask=None):
        self.seen = {"input_ids": input_ids, "attention_mask": attention_mask}
        return {"logits": self.logits.clone()}


def _manager(recipe_text: str, model, teacher, steps_per_epoch: int = 4):
    manager = Manager(recipe_text)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    manager.modify(model, optimizer, steps_per_epoch, distillation_teacher=teacher)
    return manager


def test_kl_matches_hand_computation():
    for temperature in (1.0, 2.0, 5.0):
        got = kl_logsoftmax(torch.tensor(STUDENT), torch.tensor(TEACHER), temperature)
        assert got.item() == pytest.approx(_hand_kl(STUDENT, TEACHER, temperature), rel=1e-5)


def test_kl_rows_of_token_logits_are_averaged_per_row():
    student = torch.tensor([STUDENT, STUDENT])  # (batch 2, seq 2, classes 3): 4 rows
    teacher = torch.tensor([TEACHER, TEACHER])
    expected = _hand_kl(STUDENT * 2, TEACHER * 2, 2.0)
    assert kl_logsoftmax(student, teacher, 2.0).item() == pytest.approx(expected, rel=1e-5)


def test_padded_tokens_do_not_count_in_token_distillation():
    """Token logits (batch, seq, classes): rows the attention mask drops are left out of the sum
    and of the count, so the loss is the hand KL over the real tokens only, whatever the padded
    positions hold; per-sequence logits ignore the mask."""
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    real = mask.bool()
    expected = _hand_kl(student[real].tolist(), teacher[real].tolist(), 2.0)
    mod = DistillationModifier(hardness=1.0, temperature=2.0)
    inputs = {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": mask}
    got = mod.distillation_loss({"logits": student}, {"logits": teacher}, inputs)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    noisy = student.clone()
    noisy[1, 1:] = 100.0  # garbage where the mask says padding
    assert mod.distillation_loss(
        {"logits": noisy}, {"logits": teacher}, inputs
    ).item() == pytest.approx(expected, rel=1e-5)
    unmasked = mod.distillation_loss({"logits": student}, {"logits": teacher})
    assert unmasked.item() != pytest.approx(expected, rel=1e-3)  # the mask made the difference
    # one row per sequence (batch, classes): the (batch, seq) mask does not apply
    pooled = mod.distillation_loss({"logits": student[:, 0]}, {"logits": teacher[:, 0]}, inputs)
    assert pooled.item() == pytest.approx(
        _hand_kl(student[:, 0].tolist(), teacher[:, 0].tolist(), 2.0), rel=1e-5
    )


def test_distillation_loss_mixes_task_loss_by_hardness():
    model = torch.nn.Linear(2, 2)
    teacher = Fixed(TEACHER)
    manager = _manager(
        "distillation_modifiers:\n  - !DistillationModifier {hardness: 0.75, temperature: 3.0, distill_output_keys: [logits]}",
        model,
        teacher,
    )
    task_loss = torch.tensor(0.8)
    inputs = {
        "input_ids": torch.ones(2, 4, dtype=torch.long),
        "token_type_ids": torch.zeros(2, 4),
        "labels": torch.tensor([0, 1]),
    }
    loss = manager.loss_update(
        task_loss,
        student_outputs={"loss": task_loss, "logits": torch.tensor(STUDENT)},
        student_inputs=inputs,
    )
    expected = 0.25 * 0.8 + 0.75 * _hand_kl(STUDENT, TEACHER, 3.0)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # The teacher got only what its forward accepts: no token_type_ids (not in its signature), no labels.
    assert teacher.seen["input_ids"] is inputs["input_ids"]
    assert manager.logs()["distillation/teacher_loss"] == pytest.approx(
        _hand_kl(STUDENT, TEACHER, 3.0), rel=1e-5
    )


def test_mean_over_output_keys_and_precomputed_teacher_outputs():
    mod = DistillationModifier(
        hardness=1.0, temperature=2.0, distill_output_keys=["start_logits", "end_logits"]
    )
    student = {"start_logits": torch.tensor(STUDENT), "end_logits": torch.tensor(TEACHER)}
    teacher = {"start_logits": torch.tensor(TEACHER), "end_logits": torch.tensor(STUDENT)}
    expected = (_hand_kl(STUDENT, TEACHER, 2.0) + _hand_kl(TEACHER, STUDENT, 2.0)) / 2
    assert mod.distillation_loss(student, teacher).item() == pytest.approx(expected, rel=1e-5)
    # Default keys: every `*logits` output, never the scalar loss.
    mod_default = DistillationModifier(hardness=1.0, temperature=2.0)
    assert mod_default.distillation_loss(
        {"loss": torch.tensor(1.0), **student}, teacher
    ).item() == pytest.approx(expected, rel=1e-5)


def test_shape_mismatch_and_missing_key_are_model_match_errors():
    mod = DistillationModifier()
    with pytest.raises(ModelMatchError, match="shape"):
        mod.distillation_loss({"logits": torch.zeros(2, 3)}, {"logits": torch.zeros(2, 4)})
    with pytest.raises(ModelMatchError, match="not among"):
        DistillationModifier(distill_output_keys=["nope"]).distillation_loss(
            {"logits": torch.zeros(2, 3)}, {}
        )


def test_schedule_and_disable():
    model = torch.nn.Linear(2, 2)
    recipe = "distillation_modifiers:\n  - !DistillationModifier {hardness: 1.0, start_epoch: 1.0, end_epoch: 2.0}"
    manager = _manager(recipe, model, Fixed(TEACHER), steps_per_epoch=2)
    outputs = {"logits": torch.tensor(STUDENT)}
    inputs = {"input_ids": torch.ones(2, 2, dtype=torch.long)}
    seen = []
    for _ in range(6):  # epochs 0, 0.5, 1, 1.5, 2, 2.5
        seen.append(
            manager.loss_update(
                torch.tensor(0.5), student_outputs=outputs, student_inputs=inputs
            ).item()
        )
        manager.optimizer_pre_step()
        manager.optimizer_post_step()
    kl = _hand_kl(STUDENT, TEACHER, 2.0)
    assert seen == pytest.approx([0.5, 0.5, kl, kl, 0.5, 0.5], rel=1e-5)
    disabled = _manager(
        "distillation_modifiers:\n  - !DistillationModifier {hardness: 1.0}", model, "disable"
    )
    assert (
        disabled.loss_update(
            torch.tensor(0.5), student_outputs=outputs, student_inputs=inputs
        ).item()
        == 0.5
    )


def test_self_teacher_is_a_frozen_copy_of_the_starting_model():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 3)
    manager = _manager(
        "distillation_modifiers:\n  - !DistillationModifier {hardness: 1.0, temperature: 1.0}",
        model,
        "self",
    )
    with torch.no_grad():
        model.weight.add_(1.0)  # the student moves on; the teacher must not
    teacher = manager.modifiers[0]._teacher
    assert teacher is not model and not any(p.requires_grad for p in teacher.parameters())
    assert not torch.equal(teacher.weight, model.weight)


def test_filter_teacher_inputs():
    teacher = Fixed(TEACHER)
    inputs = {"input_ids": 1, "attention_mask": 2, "token_type_ids": 3, "labels": 4}
    assert filter_teacher_inputs(teacher, inputs, None) == {"input_ids": 1, "attention_mask": 2}
    assert filter_teacher_inputs(teacher, inputs, ["input_ids", "labels"]) == {
        "input_ids": 1,
        "labels": 4,
    }
    with pytest.raises(ModelMatchError, match="teacher_input_keys"):
        filter_teacher_inputs(teacher, inputs, ["pixel_values"])


def test_recipe_validation():
    with pytest.raises(RecipeError, match="hardness"):
        Recipe.load("modifiers:\n  - !DistillationModifier {hardness: 1.5}")
    with pytest.raises(RecipeError, match="temperature"):
        Recipe.load("modifiers:\n  - !DistillationModifier {temperature: 0}")
    with pytest.raises(RecipeError, match="pair one to one"):
        Recipe.load(
            "modifiers:\n  - !PerLayerDistillationModifier {student_layer_names: [a], teacher_layer_names: [a, b]}"
        )
    text = Recipe.load(
        "modifiers:\n  - !DistillationModifier {hardness: 0.4, distill_output_keys: [logits]}"
    ).to_yaml()
    assert Recipe.load(text).modifiers[0].hardness == 0.4


class TwoLayer(torch.nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.first = torch.nn.Linear(2, hidden)
        self.second = torch.nn.Linear(hidden, 2)

    def forward(self, x):
        return {"logits": self.second(self.first(x))}


def test_per_layer_loss_formula_without_projection():
    torch.manual_seed(0)
    student, teacher = TwoLayer(4), TwoLayer(4)
    recipe = (
        "modifiers:\n  - !PerLayerDistillationModifier {gain: 2.0, normalize: true, project_features: false, "
        "student_layer_names: [first], teacher_layer_names: [first]}"
    )
    manager = _manager(recipe, student, teacher)
    x = torch.randn(3, 2)
    student(x)
    loss = manager.loss_update(torch.tensor(0.3), student_outputs=None, student_inputs={"x": x})
    s, t = student.first(x), teacher.first(x)
    expected = 0.3 + 2.0 * ((s - t).square().mean() / (t.square().mean() + 1e-6))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_per_layer_loss_leaves_padded_tokens_out():
    torch.manual_seed(0)
    student, teacher = TwoLayer(4), TwoLayer(4)
    recipe = (
        "modifiers:\n  - !PerLayerDistillationModifier {gain: 1.0, normalize: true, project_features: false, "
        "student_layer_names: [first], teacher_layer_names: [first]}"
    )
    manager = _manager(recipe, student, teacher)
    x = torch.randn(2, 3, 2)  # (batch, seq, features)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    student(x)
    loss = manager.loss_update(
        torch.tensor(0.0), student_outputs=None, student_inputs={"x": x, "attention_mask": mask}
    )
    real = mask.bool()
    s, t = student.first(x)[real], teacher.first(x)[real]
    expected = (s - t).square().mean() / (t.square().mean() + 1e-6)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_per_layer_projection_trains_with_the_optimizer_but_is_not_saved():
    torch.manual_seed(0)
    student, teacher = TwoLayer(3), TwoLayer(5)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    manager = Manager(
        "modifiers:\n  - !PerLayerDistillationModifier {normalize: false, student_layer_names: [first]}"
    )
    scheduled = manager.modify(student, optimizer, 1, distillation_teacher=teacher)
    mod = manager.modifiers[0]
    projection = mod.projection_parameters()
    assert [tuple(p.shape) for p in projection] == [(5, 3)]
    assert any(p is projection[0] for group in optimizer.param_groups for p in group["params"])
    assert not any(
        k.startswith("_projection") or k.endswith("projection") for k in student.state_dict()
    )
    x = torch.randn(4, 2)
    before = projection[0].detach().clone()
    out = student(x)
    loss = manager.loss_update(
        out["logits"].sum() * 0, student_outputs=out, student_inputs={"x": x}
    )
    loss.backward()
    scheduled.step()
    assert not torch.equal(before, projection[0])
    state = manager.state_dict()
    restored = Manager(
        "modifiers:\n  - !PerLayerDistillationModifier {normalize: false, student_layer_names: [first]}"
    )
    restored.modify(
        TwoLayer(3),
        torch.optim.SGD(TwoLayer(3).parameters(), lr=0.1),
        1,
        distillation_teacher=teacher,
    )
    restored.load_state_dict(state)
    assert torch.equal(restored.modifiers[0].projection_parameters()[0], projection[0])


def test_per_layer_unknown_layer_is_an_error():
    with pytest.raises(ModelMatchError, match="nope"):
        _manager(
            "modifiers:\n  - !PerLayerDistillationModifier {student_layer_names: [nope]}",
            TwoLayer(2),
            TwoLayer(2),
        )


class Counting(TwoLayer):
    """A teacher that counts its forward passes."""

    def __init__(self, hidden: int):
        super().__init__(hidden)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return super().forward(x)


BOTH = (
    "modifiers:\n  - !DistillationModifier {hardness: 0.5, temperature: 1.0}\n"
    "  - !PerLayerDistillationModifier {gain: 2.0, normalize: false, project_features: false, "
    "student_layer_names: [first]}"
)


def test_output_and_per_layer_distillation_share_one_teacher_run_per_loss_update():
    torch.manual_seed(0)
    student, teacher = TwoLayer(4), Counting(4)
    manager = _manager(BOTH, student, teacher)
    for call in (1, 2):
        x = torch.randn(3, 2)
        outputs = student(x)
        loss = manager.loss_update(
            torch.tensor(0.3), student_outputs=outputs, student_inputs={"x": x}
        )
        assert (
            teacher.calls == call
        )  # once per call, not once per modifier, and again on new inputs
        with torch.no_grad():
            kl = kl_logsoftmax(outputs["logits"], teacher.second(teacher.first(x)), 1.0)
            mse = (student.first(x) - teacher.first(x)).square().mean()
        assert loss.item() == pytest.approx((0.5 * 0.3 + 0.5 * kl + 2.0 * mse).item(), rel=1e-5)


def test_self_teacher_is_one_copy_for_both_distillation_modifiers():
    student = TwoLayer(4)
    manager = _manager(BOTH, student, "self")
    first, second = (mod._teacher for mod in manager.modifiers)
    assert first is second and first is not student
