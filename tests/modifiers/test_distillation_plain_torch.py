"""Distillation outside Hugging Face (issue 18, item 10): tensor and tuple inputs and outputs, as
SparseML's `loss_update(loss, student_outputs=out, student_inputs=x)` takes them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sparseforge import Manager, ModelMatchError
from sparseforge.modifiers.distillation import kl_logsoftmax

RECIPE = """
modifiers:
  - !DistillationModifier
      start_epoch: 0.0
      hardness: 0.75
      temperature: 3.0
"""


class TinyCNN(torch.nn.Module):
    """torchvision-style: `model(images)` returns the logits tensor."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.fc(F.adaptive_avg_pool2d(torch.relu(self.conv(x)), 1).flatten(1))


class TwoInputTwoOutput(torch.nn.Module):
    """Positional inputs, tuple outputs: `model(a, b) -> (logits_a, logits_b)`."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.a = torch.nn.Linear(6, 3)
        self.b = torch.nn.Linear(6, 4)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        return self.a(a), self.b(b)


def test_tensor_inputs_and_outputs_distill_with_sparseml_formula():
    student, teacher = TinyCNN(0).train(), TinyCNN(1)
    manager = Manager(RECIPE)
    optimizer = manager.modify(
        student, torch.optim.SGD(student.parameters(), lr=0.1), 2, distillation_teacher=teacher
    )
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3])
    out = student(x)
    task_loss = F.cross_entropy(out, y)
    loss = manager.loss_update(task_loss, student_outputs=out, student_inputs=x)
    with torch.no_grad():
        expected = 0.25 * task_loss + 0.75 * kl_logsoftmax(out, teacher(x), 3.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    optimizer.step()
    assert all(p.grad is None for p in teacher.parameters())  # the teacher stays frozen


def test_tuple_inputs_and_tuple_outputs():
    student, teacher = TwoInputTwoOutput(0), TwoInputTwoOutput(1)
    manager = Manager(RECIPE)
    manager.modify(
        student, torch.optim.SGD(student.parameters(), lr=0.1), 1, distillation_teacher=teacher
    )
    a, b = torch.randn(2, 6), torch.randn(2, 6)
    out = student(a, b)
    loss = manager.loss_update(torch.tensor(1.0), student_outputs=out, student_inputs=(a, b))
    with torch.no_grad():
        t = teacher(a, b)
        kl = (kl_logsoftmax(out[0], t[0], 3.0) + kl_logsoftmax(out[1], t[1], 3.0)) / 2
    assert loss.item() == pytest.approx(0.25 + 0.75 * kl.item(), rel=1e-6)


def test_per_layer_distillation_with_tensor_inputs():
    student, teacher = TinyCNN(0), TinyCNN(1)
    recipe = """
modifiers:
  - !PerLayerDistillationModifier
      start_epoch: 0.0
      gain: 1.0
      student_layer_names: [fc]
      teacher_layer_names: [fc]
      project_features: false
      normalize: false
"""
    manager = Manager(recipe)
    manager.modify(
        student, torch.optim.SGD(student.parameters(), lr=0.1), 1, distillation_teacher=teacher
    )
    x = torch.randn(2, 3, 8, 8)
    out = student(x)
    loss = manager.loss_update(torch.tensor(0.0), student_outputs=out, student_inputs=x)
    with torch.no_grad():
        expected = (out - teacher(x)).square().mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_teacher_input_keys_need_named_inputs():
    student, teacher = TinyCNN(0), TinyCNN(1)
    manager = Manager(
        RECIPE.replace(
            "temperature: 3.0", "temperature: 3.0\n      teacher_input_keys: [pixel_values]"
        )
    )
    manager.modify(
        student, torch.optim.SGD(student.parameters(), lr=0.1), 1, distillation_teacher=teacher
    )
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ModelMatchError, match="teacher_input_keys .* need the inputs as a dict"):
        manager.loss_update(torch.tensor(0.0), student_outputs=student(x), student_inputs=x)
