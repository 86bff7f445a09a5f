import pytest
import torch
import torch.nn.functional as F

from shrinkflow.models.cnn import ArchParams
from shrinkflow.steps.distill import DistillStep, distillation_loss
from tests.steps_helpers import call
from tests.unit.steps.conftest import FIT


def test_distillation_loss_matches_its_formula():
    s = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    t = torch.tensor([[1.0, 3.0, 0.0], [2.0, -1.0, 0.5]])
    y = torch.tensor([0, 2])
    temp, alpha = 2.0, 0.3
    p_t = F.softmax(t / temp, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / temp, 1))).sum(1).mean() * temp**2
    assert distillation_loss(s, t, y, "soft", alpha, temp) == pytest.approx(kl.item(), rel=1e-5)
    mixed = alpha * kl + (1 - alpha) * F.cross_entropy(s, y)
    assert distillation_loss(s, t, y, "mixed", alpha, temp) == pytest.approx(mixed.item(), rel=1e-5)
    hard = -F.log_softmax(s, 1)[[0, 1], [1, 0]].mean()  # teacher argmax: 1, 0
    assert distillation_loss(s, t, y, "hard") == pytest.approx(hard.item(), rel=1e-5)


def test_distill_trains_a_smaller_student(tiny, tmp_path):
    _, data, teacher = tiny
    step = DistillStep(student=ArchParams(blocks=[[4], [8]], dropout=0.0), fit=FIT)
    student = call("distill", step, tmp_path, data=data, model=teacher)
    assert student.num_params < teacher.num_params / 2
    assert student.step == "distill"
