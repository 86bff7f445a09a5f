"""Knowledge distillation: train a student on a teacher's outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from shrinkflow.artifacts import DataArtifact, ModelArtifact
from shrinkflow.config import DistillStep
from shrinkflow.data import load_prepared
from shrinkflow.models import build_model, load_checkpoint
from shrinkflow.training import derive, fit, fit_config_for, predict_logits


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                      loss: str, alpha: float = 0.5, temperature: float = 4.0) -> torch.Tensor:
    """hard: CE on the teacher's argmax; soft: T^2 * KL(softmax(t/T) || softmax(s/T));
    mixed: alpha * soft + (1 - alpha) * CE on the true labels.

    The T^2 factor keeps the soft term's gradients on the scale of the hard term's as
    T changes (Hinton et al., 2015).
    """
    if loss == "hard":
        return F.cross_entropy(student, teacher.argmax(dim=1))
    t = temperature
    soft = F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)
    if loss == "soft":
        return soft
    if loss == "mixed":
        return alpha * soft + (1 - alpha) * F.cross_entropy(student, labels)
    raise ValueError(f"unknown distillation loss {loss!r}")


def distill(parent: ModelArtifact, step: DistillStep, data: DataArtifact, out_path: str | Path,
            threads: int = 2) -> ModelArtifact:
    """Train ``step.student`` from scratch on ``parent``'s logits (and the labels)."""
    teacher, _ = load_checkpoint(parent.path)
    splits = load_prepared(data.path)
    student = build_model(step.student, splits.input_shape, splits.num_classes, seed=step.fit.seed)
    cfg = fit_config_for(step.fit, threads)
    # Without augmentation the teacher sees the same inputs every epoch: compute once.
    cached = None if cfg.augment_shift else torch.from_numpy(predict_logits(teacher, splits.x_train))

    def loss_fn(logits, xb, yb, idx):
        if cached is not None:
            t_logits = cached[idx]
        else:
            with torch.no_grad():
                t_logits = teacher(xb)
        return distillation_loss(logits, t_logits, yb, step.loss, step.alpha, step.temperature)

    result = fit(student, splits, cfg, loss_fn=loss_fn, desc="distill")
    return derive(parent, student, step.student, step, out_path, data, splits,
                  summary=result.summary())


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(1) == b.argmax(1)).mean())
