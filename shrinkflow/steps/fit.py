"""The one training loop. Train, fine-tune, distill and QAT differ only in the loss, the
masks kept at zero, and the hooks run after each backward pass.

Every random number comes from an explicit generator (batch order, augmentation,
dropout) and the thread count is fixed per step, so a step gives the same bytes
whatever else runs on the machine.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from shrinkflow.core.config import Int, Section, Seed
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.records import DataArtifact, ModelArtifact
from shrinkflow.data.prepare import Splits
from shrinkflow.models.checkpoint import model_record, read_checkpoint, save_checkpoint
from shrinkflow.models.cnn import ArchParams, dropout_generator

log = logging.getLogger("shrinkflow")

# loss(logits, inputs, labels, indices into the training split, augmented view of each
# input: see :func:`augment`; all zeros without augmentation)
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                  torch.Tensor]
Hook = Callable[[nn.Module], None]


class FitParams(Section):
    """Training knobs shared by every step that trains (fine-tune, distill, QAT, movement)."""

    epochs: Int = Field(3, ge=1, le=10_000)
    lr: float = Field(5e-4, gt=0, le=10, allow_inf_nan=False)
    batch_size: Int = Field(64, ge=1, le=1_000_000)
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False)
    patience: Int = Field(5, ge=1)
    augment_shift: Int = Field(0, ge=0, le=8)
    # Mirror each training image left-right with probability 1/2 (clothes, scenes;
    # not digits or text).
    augment_flip: bool = False
    seed: Seed = 7


@dataclass(frozen=True)
class FitConfig:
    epochs: int
    batch_size: int
    lr: float
    seed: int
    patience: int
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    augment_shift: int = 0
    augment_flip: bool = False
    threads: int = 1

    @property
    def augments(self) -> bool:
        return bool(self.augment_shift or self.augment_flip)


@dataclass
class FitResult:
    best_epoch: int
    epochs_run: int
    best_val_accuracy: float
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        return {"best_epoch": self.best_epoch, "epochs_run": self.epochs_run,
                "best_val_accuracy": self.best_val_accuracy,
                "fit_seconds": round(self.seconds, 3)}


def set_determinism(seed: int, threads: int) -> torch.Generator:
    """Fix the thread count and return the generator a training run draws from
    (nothing here touches torch's global random generator)."""
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def view_count(shift: int, flip: bool) -> int:
    """How many distinct inputs :func:`augment` makes of one image."""
    return (2 * shift + 1) ** 2 * (2 if flip else 1)


def view_of(x: torch.Tensor, view: int, shift: int, flip: bool, fill: float) -> torch.Tensor:
    """Every image of ``x`` as augmented view number ``view`` (see :func:`augment`)."""
    side, flips = 2 * shift + 1, 2 if flip else 1
    f, cell = view % flips, view // flips
    oy, ox = divmod(cell, side)
    if shift:
        h, w = x.shape[-2:]
        x = F.pad(x, (shift, shift, shift, shift), value=fill)[..., oy:oy + h, ox:ox + w]
    return torch.flip(x, dims=(-1,)) if f else x


def augment(x: torch.Tensor, shift: int, flip: bool, g: torch.Generator,
            fill: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Translate each image by up to ``shift`` pixels (padding with ``fill``, the
    background: the batch's minimum unless given) and, with ``flip``, mirror it
    left-right with probability 1/2. Returns the images and each one's view number
    (0 .. view_count - 1), which names its transformation: a distiller can look the
    teacher's logits for it up instead of recomputing them."""
    n = len(x)
    fill = float(x.amin()) if fill is None else fill
    side = 2 * shift + 1
    zeros = torch.zeros(n, dtype=torch.long)
    dy = torch.randint(0, side, (n,), generator=g) if shift else zeros
    dx = torch.randint(0, side, (n,), generator=g) if shift else zeros
    f = torch.randint(0, 2, (n,), generator=g) if flip else zeros
    views = (dy * side + dx) * (2 if flip else 1) + f
    out = torch.empty_like(x)
    for v in views.unique().tolist():
        sel = (views == v).nonzero(as_tuple=True)[0]
        out[sel] = view_of(x[sel], v, shift, flip, fill)
    return out, views


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray | torch.Tensor, batch: int = 1024) -> np.ndarray:
    """Logits of ``model`` (in eval mode) on ``x``, batched."""
    model.eval()
    xt = torch.as_tensor(x)
    outs = [model(xt[i:i + batch]) for i in range(0, len(xt), batch)]
    return torch.cat(outs).numpy()


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean())


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the masked-out weights in place (masks: parameter name -> bool/0-1 tensor)."""
    if not masks:
        return
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask.to(params[name].dtype))


def _epoch(model, x_train, y_train, cfg: FitConfig, g, opt, loss_fn, masks, hooks, fill):
    model.train()
    order = torch.randperm(len(x_train), generator=g)
    total_loss, seen = 0.0, 0
    for i in range(0, len(order), cfg.batch_size):
        idx = order[i:i + cfg.batch_size]
        xb, yb = x_train[idx], y_train[idx]
        views = torch.zeros(len(idx), dtype=torch.long)
        if cfg.augments:
            xb, views = augment(xb, cfg.augment_shift, cfg.augment_flip, g, fill)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), xb, yb, idx, views)
        loss.backward()
        for hook in hooks or ():
            hook(model)
        opt.step()
        apply_masks(model, masks or {})
        total_loss += float(loss.detach()) * len(idx)
        seen += len(idx)
    return total_loss, seen


def fit(
    model: nn.Module,
    splits: Splits,
    cfg: FitConfig,
    loss_fn: LossFn | None = None,
    masks: dict[str, torch.Tensor] | None = None,
    hooks: list[Hook] | None = None,
    desc: str = "train",
) -> FitResult:
    """Train ``model`` in place with Adam; early-stop on validation accuracy and restore
    the best weights. ``masks`` stay exactly zero throughout (pruned fine-tuning);
    ``hooks`` run after every backward pass (e.g. movement-pruning scores).
    """
    from tqdm.auto import tqdm

    g = set_determinism(cfg.seed, cfg.threads)
    if loss_fn is None:
        def loss_fn(logits, _x, y, _idx, _views):
            return F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    x_train = torch.from_numpy(splits.x_train)
    y_train = torch.from_numpy(splits.y_train)
    fill = augment_fill(x_train)
    apply_masks(model, masks or {})

    best_acc, best_epoch, best_state = -1.0, 0, copy.deepcopy(model.state_dict())
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    bar = tqdm(range(1, cfg.epochs + 1), desc=desc, unit="epoch", disable=None, leave=False)
    epoch = 0
    for epoch in bar:
        with dropout_generator(g):
            total_loss, seen = _epoch(model, x_train, y_train, cfg, g, opt, loss_fn, masks, hooks,
                                      fill)
        sched.step()
        if not math.isfinite(total_loss):
            raise ShrinkflowError(f"{desc}: training diverged (loss {total_loss / seen} at epoch "
                                  f"{epoch}); lower the learning rate or check the data")
        val_acc = accuracy(predict_logits(model, splits.x_val), splits.y_val)
        history.append({"epoch": epoch, "train_loss": total_loss / seen, "val_accuracy": val_acc})
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", val_acc=f"{val_acc:.4f}")
        log.info("%s epoch %d/%d loss %.4f val_accuracy %.4f", desc, epoch, cfg.epochs,
                 total_loss / seen, val_acc)
        if val_acc > best_acc:
            best_acc, best_epoch, best_state = val_acc, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= cfg.patience:
            log.info("%s: early stop at epoch %d (best %d)", desc, epoch, best_epoch)
            break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    return FitResult(best_epoch=best_epoch, epochs_run=epoch, best_val_accuracy=best_acc,
                     seconds=time.perf_counter() - start, history=history)


def augment_fill(x_train: torch.Tensor) -> float:
    """The value shifted-in pixels take: the training images' background (their minimum),
    the same for every batch, so an augmented view does not depend on its batch."""
    return float(x_train.amin()) if len(x_train) else 0.0


def checkpoint_info(data: DataArtifact, splits: Splits) -> dict:
    """What every checkpoint stores about the data it was made from."""
    return {"input_shape": list(splits.input_shape), "num_classes": splits.num_classes,
            "classes": list(splits.meta.get("classes", [])),
            "norm": {k: splits.meta[k] for k in ("scale", "mean", "std")},
            "data_fingerprint": data.fingerprint}


def fit_config_for(fit: FitParams, threads: int) -> FitConfig:
    return FitConfig(epochs=fit.epochs, batch_size=fit.batch_size, lr=fit.lr, seed=fit.seed,
                     patience=fit.patience, weight_decay=fit.weight_decay,
                     augment_shift=fit.augment_shift, augment_flip=fit.augment_flip,
                     threads=threads)


def derive(parent: ModelArtifact, model: nn.Module, arch: ArchParams, step: Section,
           out_path: str | Path, data: DataArtifact, splits: Splits,
           masks: dict[str, torch.Tensor] | None = None, qat: dict | None = None,
           summary: dict[str, float] | None = None,
           history: list[dict[str, float]] | None = None) -> ModelArtifact:
    """Save a model that ``step`` derived from ``parent``, recording the derivation.

    The checkpoint is not named after a variant: identical (parent, step) pairs of
    different variants are the same artifact, and the caller names it on publishing.
    """
    parent_ckpt = read_checkpoint(parent.path)
    lineage = [*parent_ckpt.get("lineage", []),
               {"step": parent.step, "sha256": parent.sha256, "config_hash": parent.config_hash}]
    curves = [*parent_ckpt.get("history", []),
              *({**h, "step": step.kind} for h in history or [])]
    save_checkpoint(model, arch, out_path, step=step.kind, name=step.kind, parent=None,
                    parent_sha256=parent.sha256, config=step.model_dump(mode="json"),
                    config_hash=step.config_hash(), lineage=lineage, history=curves,
                    masks={k: v.detach().to(torch.uint8) for k, v in (masks or {}).items()},
                    qat=qat, **checkpoint_info(data, splits))
    return model_record(out_path, summary=summary)


def load_masks(ckpt: dict) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in (ckpt.get("masks") or {}).items()}
