"""Step ``distill``: train a (smaller) student on a teacher's outputs."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from shrinkflow.core.config import Section
from shrinkflow.core.records import DataArtifact, ModelArtifact
from shrinkflow.data.prepare import load_prepared
from shrinkflow.models.checkpoint import load_checkpoint
from shrinkflow.models.cnn import ArchParams
from shrinkflow.models.spec import ModelSpec, build
from shrinkflow.steps.base import Context, step
from shrinkflow.steps.fit import (
    FitConfig,
    FitParams,
    augment_fill,
    derive,
    fit,
    fit_config_for,
    predict_logits,
    view_count,
    view_of,
)

# Teacher logits of every augmented view are precomputed when that takes fewer teacher
# passes than the epochs would, and fits in this much memory.
CACHE_BYTES = 1 << 30


class DistillStep(Section):
    """Train a (smaller) student on the parent model's outputs."""

    kind: Literal["distill"] = "distill"
    # A CNN (default), {kind: mlp, ...} or {factory: "pkg.mod:fn", kwargs: {...}}.
    student: ModelSpec = Field(default_factory=lambda: ArchParams(blocks=[[8], [16]]))
    # hard: teacher's argmax as labels; soft: KL on T-softened logits (x T^2);
    # mixed: alpha * soft + (1 - alpha) * cross-entropy on the true labels.
    loss: Literal["hard", "soft", "mixed"] = "mixed"
    alpha: float = Field(0.5, ge=0, le=1)
    temperature: float = Field(4.0, gt=0, le=100)
    fit: FitParams = Field(default_factory=lambda: FitParams(epochs=20, lr=2e-3))


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


def teacher_views(teacher: torch.nn.Module, x_train, cfg: FitConfig, num_classes: int
                  ) -> torch.Tensor | None:
    """The teacher's logits for every augmented view of every training image
    (views x images x classes), or None where computing them per batch is cheaper.

    Without augmentation there is one view, computed once. With it, an image appears as
    one of ``view_count`` inputs (shifts x mirrors): computing them all up front costs
    that many passes of the teacher over the data, against one per epoch otherwise.
    """
    views = view_count(cfg.augment_shift, cfg.augment_flip)
    x = torch.from_numpy(x_train)
    if cfg.augments and (views >= cfg.epochs or
                         views * len(x) * num_classes * 4 > CACHE_BYTES):
        return None
    fill = augment_fill(x)
    return torch.stack([
        torch.from_numpy(predict_logits(
            teacher, view_of(x, v, cfg.augment_shift, cfg.augment_flip, fill)))
        for v in range(views)])


@step("distill", DistillStep, stage="compress")
def run(config: DistillStep, ctx: Context, data: DataArtifact, model: ModelArtifact
        ) -> ModelArtifact:
    """Train ``student`` from scratch on the parent's logits (and the labels)."""
    teacher, _ = load_checkpoint(model.path)
    splits = load_prepared(data.path)
    student = build(config.student, splits.input_shape, splits.num_classes,
                          seed=config.fit.seed)
    cfg = fit_config_for(config.fit, ctx.threads)
    cached = teacher_views(teacher, splits.x_train, cfg, splits.num_classes)

    def loss_fn(logits, xb, yb, idx, views):
        if cached is not None:
            t_logits = cached[views, idx]
        else:
            with torch.no_grad():
                t_logits = teacher(xb)
        return distillation_loss(logits, t_logits, yb, config.loss, config.alpha,
                                 config.temperature)

    result = fit(student, splits, cfg, loss_fn=loss_fn, desc=f"{ctx.model}:distill")
    return derive(model, student, config.student, config, ctx.out_dir / "model.pt", data,
                  splits, summary=result.summary(), history=result.history)
