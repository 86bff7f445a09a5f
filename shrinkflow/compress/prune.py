"""Pruning: unstructured masks (magnitude, random, movement) and structured channel removal.

Unstructured methods zero weights and return masks (parameter name -> 0/1 tensor) that
every later training step keeps at zero; structured pruning physically removes conv
channels and hidden neurons (torch-pruning's dependency graph keeps BatchNorm, the next
conv and the linear head consistent), so size *and* latency drop.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from shrinkflow.artifacts import DataArtifact, ModelArtifact
from shrinkflow.config import PruneStep
from shrinkflow.errors import ShrinkflowError

log = logging.getLogger("shrinkflow")

Masks = dict[str, torch.Tensor]


def prunable(model: nn.Module) -> dict[str, nn.Parameter]:
    """Weights of conv and linear layers (biases and BatchNorm are never pruned)."""
    out = {}
    for mod_name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            out[f"{mod_name}.weight"] = module.weight
    return out


def _threshold_masks(scores: dict[str, torch.Tensor], amount: float, scope: str,
                     keep: Masks | None = None) -> Masks:
    """Keep the highest-scoring ``1 - amount`` of weights, globally or per layer.

    Weights already masked out in ``keep`` stay out (and count toward ``amount``).
    """
    keep = keep or {}
    scores = {k: torch.where(keep[k].bool(), s, torch.full_like(s, -torch.inf))
              if k in keep else s for k, s in scores.items()}
    masks: Masks = {}
    if scope == "global":
        flat = torch.cat([s.flatten() for s in scores.values()])
        n_prune = int(round(amount * flat.numel()))
        if n_prune == 0:
            return {k: torch.ones_like(s) for k, s in scores.items()}
        # kthvalue over all weights; ties broken by index order via a stable sort.
        order = torch.argsort(flat, stable=True)
        keep_flat = torch.ones_like(flat)
        keep_flat[order[:n_prune]] = 0
        offset = 0
        for k, s in scores.items():
            masks[k] = keep_flat[offset:offset + s.numel()].view_as(s)
            offset += s.numel()
        return masks
    for k, s in scores.items():
        flat = s.flatten()
        n_prune = int(round(amount * flat.numel()))
        keep_flat = torch.ones_like(flat)
        keep_flat[torch.argsort(flat, stable=True)[:n_prune]] = 0
        masks[k] = keep_flat.view_as(s)
    return masks


def magnitude_masks(model: nn.Module, amount: float, scope: str = "global",
                    keep: Masks | None = None) -> Masks:
    """Prune the smallest |w|."""
    return _threshold_masks({k: p.detach().abs() for k, p in prunable(model).items()},
                            amount, scope, keep)


def random_masks(model: nn.Module, amount: float, scope: str = "global", seed: int = 0,
                 keep: Masks | None = None) -> Masks:
    """Prune uniformly at random: the control every pruning paper compares against."""
    g = torch.Generator().manual_seed(seed)
    scores = {k: torch.rand(p.shape, generator=g) for k, p in prunable(model).items()}
    return _threshold_masks(scores, amount, scope, keep)


class MovementScores:
    """Accumulates movement-pruning scores S = -sum_t(W * dL/dW) over training steps
    (Sanh et al., 2020): weights moving away from zero score high, whatever their size."""

    def __init__(self, model: nn.Module):
        self.params = prunable(model)
        self.scores = {k: torch.zeros_like(p) for k, p in self.params.items()}

    def __call__(self, model: nn.Module) -> None:  # a training hook, run after backward
        with torch.no_grad():
            for k, p in self.params.items():
                if p.grad is not None:
                    self.scores[k] -= p.detach() * p.grad


def apply_masks_to_weights(model: nn.Module, masks: Masks) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, m in masks.items():
            params[k].mul_(m)


def sparsity(model: nn.Module) -> float:
    """Fraction of prunable weights that are exactly zero."""
    params = list(prunable(model).values())
    total = sum(p.numel() for p in params)
    zeros = sum(int((p == 0).sum()) for p in params)
    return zeros / max(1, total)


def structured_prune(model: nn.Module, amount: float, input_shape: tuple[int, ...],
                     norm: int = 1, scope: str = "global") -> nn.Module:
    """Remove ``amount`` of conv channels / hidden neurons by L1 or L2 norm, in place.

    The classifier's outputs (the classes) are never removed; torch-pruning's dependency
    graph shrinks each following layer (BatchNorm, next conv, linear head) to match.
    """
    import torch_pruning as tp

    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    example = torch.zeros((1, *input_shape))
    importance = tp.importance.MagnitudeImportance(p=norm)
    pruner = tp.pruner.MetaPruner(
        model, example, importance=importance, pruning_ratio=amount,
        global_pruning=(scope == "global"), ignored_layers=[classifier],
        round_to=None,
    )
    model.eval()
    pruner.step()
    return model


def iteration_amounts(amount: float, iterations: int) -> list[float]:
    """Cumulative sparsity after each iteration, geometric so every cycle removes the same
    fraction of what is left: 1 - (1 - amount)^(i/n)."""
    return [1 - (1 - amount) ** (i / iterations) for i in range(1, iterations + 1)]


def unstructured_masks(model: nn.Module, step: PruneStep, amount: float, keep: Masks | None,
                       scores: dict[str, torch.Tensor] | None = None) -> Masks:
    """Masks for one unstructured pruning round of ``step.method``."""
    if step.method == "magnitude":
        return magnitude_masks(model, amount, step.scope, keep)
    if step.method == "random":
        return random_masks(model, amount, step.scope, step.seed, keep)
    if step.method == "movement":
        if scores is None:
            raise ValueError("movement pruning needs scores from a training pass")
        return _threshold_masks(scores, amount, step.scope, keep)
    raise ValueError(f"not an unstructured method: {step.method}")


def prune(parent: ModelArtifact, step: PruneStep, data: DataArtifact, out_path: str | Path,
          threads: int = 2) -> ModelArtifact:
    """Prune ``parent`` to ``step.amount`` in ``step.iterations`` cycles (fine-tuning with
    ``step.fit`` between cycles); masks of earlier pruning are kept."""
    from shrinkflow.config import ArchParams
    from shrinkflow.data import load_prepared
    from shrinkflow.models import arch_of, load_checkpoint
    from shrinkflow.training import derive, fit, fit_config_for, load_masks

    model, ckpt = load_checkpoint(parent.path)
    if ckpt.get("qat"):
        raise ShrinkflowError("prune: the parent is a quantization-aware model; prune "
                              "before quantize (qat) in the chain")
    splits = load_prepared(data.path)
    arch = ArchParams.model_validate(ckpt["arch"])
    masks = load_masks(ckpt)
    cfg = fit_config_for(step.fit, threads)
    amounts = iteration_amounts(step.amount, step.iterations)
    for i, amount in enumerate(amounts):
        last = i == len(amounts) - 1
        if step.method == "structured":
            # Each cycle removes the same fraction of the channels that are left.
            ratio = 1 - (1 - step.amount) ** (1 / step.iterations)
            structured_prune(model, ratio, splits.input_shape, step.norm, step.scope)
            # Earlier unstructured zeros stay zero: re-derive the masks in the new shapes.
            masks = {k: (p != 0).float() for k, p in prunable(model).items()} if masks else {}
        else:
            scores = None
            if step.method == "movement":
                tracker = MovementScores(model)
                fit(model, splits, cfg, masks=masks, hooks=[tracker], desc="movement")
                scores = tracker.scores
            masks = unstructured_masks(model, step, amount, masks, scores)
            apply_masks_to_weights(model, masks)
        if not last and step.method != "movement":
            fit(model, splits, cfg, masks=masks, desc=f"prune cycle {i + 1}")
        log.info("prune %s: cycle %d/%d, sparsity %.3f", step.method, i + 1, len(amounts),
                 sparsity(model))
    if step.method == "structured":
        arch = arch_of(model, arch)
    return derive(parent, model, arch, step, out_path, data, splits, masks=masks,
                  summary={"sparsity": sparsity(model)})
