"""Step ``prune``: unstructured masks (magnitude, random, movement) and structured
channel removal.

Unstructured methods zero weights and return masks (parameter name -> 0/1 tensor) that
every later training step keeps at zero; structured pruning physically removes conv
channels and hidden neurons (torch-pruning's dependency graph keeps BatchNorm, the next
conv and the linear head consistent), so size *and* latency drop.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from shrinkflow.core.config import Int, Section, Seed
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.records import DataArtifact, ModelArtifact
from shrinkflow.data.prepare import load_prepared
from shrinkflow.models.checkpoint import load_checkpoint
from shrinkflow.models.cnn import ArchParams, arch_of
from shrinkflow.models.spec import output_layer, parse_spec
from shrinkflow.steps.base import Context, step
from shrinkflow.steps.fit import FitParams, apply_masks, derive, fit, fit_config_for, load_masks

log = logging.getLogger("shrinkflow")

Masks = dict[str, torch.Tensor]


class PruneStep(Section):
    """Unstructured (magnitude, random, movement) masks, or structured channel removal."""

    kind: Literal["prune"] = "prune"
    method: Literal["magnitude", "random", "movement", "structured"] = "magnitude"
    amount: float = Field(0.5, gt=0, lt=1)
    # global: one threshold over all layers; layer: the same fraction in every layer.
    scope: Literal["global", "layer"] = "global"
    # structured: L1 or L2 norm of a channel's weights ranks the channels.
    norm: Literal[1, 2] = 1
    # Iterative schedule: reach `amount` in this many prune -> fine-tune cycles.
    iterations: Int = Field(1, ge=1, le=50)
    # Fine-tuning between iterations, and for movement the epochs that score weights.
    fit: FitParams = Field(default_factory=lambda: FitParams(epochs=1))
    seed: Seed = 0


def prunable(model: nn.Module) -> dict[str, nn.Parameter]:
    """Weights of conv and linear layers (biases and BatchNorm are never pruned)."""
    out = {}
    for mod_name, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd | nn.Linear):
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

    example = torch.zeros((1, *input_shape))
    classifier = output_layer(model, example)
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


@step("prune", PruneStep, stage="compress")
def run(config: PruneStep, ctx: Context, data: DataArtifact, model: ModelArtifact
        ) -> ModelArtifact:
    """Prune to ``amount`` in ``iterations`` cycles (fine-tuning with ``fit`` between
    cycles); masks of earlier pruning are kept."""
    step = config
    net, ckpt = load_checkpoint(model.path)
    if ckpt.get("qat"):
        raise ShrinkflowError("prune: the parent is a quantization-aware model; prune "
                              "before quantize (qat) in the chain")
    splits = load_prepared(data.path)
    arch = parse_spec(ckpt["arch"])
    masks = load_masks(ckpt)
    cfg = fit_config_for(step.fit, ctx.threads)
    torch.set_num_threads(ctx.threads)
    amounts = iteration_amounts(step.amount, step.iterations)
    for i, amount in enumerate(amounts):
        last = i == len(amounts) - 1
        if step.method == "structured":
            # Each cycle removes the same fraction of the channels that are left.
            ratio = 1 - (1 - step.amount) ** (1 / step.iterations)
            structured_prune(net, ratio, splits.input_shape, step.norm, step.scope)
            # Earlier unstructured zeros stay zero: re-derive the masks in the new shapes.
            masks = {k: (p != 0).float() for k, p in prunable(net).items()} if masks else {}
        else:
            scores = None
            if step.method == "movement":
                tracker = MovementScores(net)
                fit(net, splits, cfg, masks=masks, hooks=[tracker], desc=f"{ctx.model}:movement")
                scores = tracker.scores
            masks = unstructured_masks(net, step, amount, masks, scores)
            apply_masks(net, masks)
        if not last and step.method != "movement":
            fit(net, splits, cfg, masks=masks, desc=f"{ctx.model}:prune cycle {i + 1}")
        log.info("%s:prune %s: cycle %d/%d, sparsity %.3f", ctx.model, step.method, i + 1,
                 len(amounts), sparsity(net))
    if step.method == "structured" and isinstance(arch, ArchParams):
        # (any other model is rebuilt from its spec and reshaped to its stored weights)
        arch = arch_of(net, arch)
    return derive(model, net, arch, step, ctx.out_dir / "model.pt", data, splits, masks=masks,
                  summary={"sparsity": sparsity(net)})
