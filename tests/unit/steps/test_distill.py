import pytest
import torch
import torch.nn.functional as F

from shrinkflow.models.cnn import ArchParams, build_model
from shrinkflow.steps.distill import DistillStep, distillation_loss, teacher_views
from shrinkflow.steps.fit import FitConfig, augment, augment_fill
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


def test_teacher_views_are_the_teachers_logits_on_each_augmented_input():
    teacher = build_model(ArchParams(blocks=[[4], [8]]), (1, 8, 8), 3, seed=0).eval()
    x = torch.randn(40, 1, 8, 8)
    cfg = FitConfig(epochs=30, batch_size=8, lr=0.01, seed=0, patience=5, augment_shift=1,
                    augment_flip=True)
    cached = teacher_views(teacher, x.numpy(), cfg, 3)
    assert cached.shape == (18, 40, 3)
    idx = torch.arange(5, 21)
    xb, views = augment(x[idx], 1, True, torch.Generator().manual_seed(0), augment_fill(x))
    with torch.no_grad():
        assert torch.allclose(cached[views, idx], teacher(xb), atol=1e-5)
    # More views than epochs: computing per batch is cheaper, nothing is cached.
    few = FitConfig(epochs=10, batch_size=8, lr=0.01, seed=0, patience=5, augment_shift=1,
                    augment_flip=True)
    assert teacher_views(teacher, x.numpy(), few, 3) is None
    plain = FitConfig(epochs=2, batch_size=8, lr=0.01, seed=0, patience=5)
    assert teacher_views(teacher, x.numpy(), plain, 3).shape == (1, 40, 3)


def test_distill_with_shift_and_flip(tiny, tmp_path):
    _, data, teacher = tiny
    fit = FIT.model_copy(update={"augment_shift": 1, "augment_flip": True})
    step = DistillStep(student=ArchParams(blocks=[[4], [8]], dropout=0.0), fit=fit)
    student = call("distill", step, tmp_path, data=data, model=teacher)
    assert student.step == "distill"
