"""Transfer for the ``train`` step: start the teacher from another model's checkpoint
(its architecture and weights), a new classifier when the classes differ, and layers
kept frozen (``train.init_from``, ``train.freeze``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.files import file_sha256
from shrinkflow.models.checkpoint import load_checkpoint
from shrinkflow.models.spec import output_layer, parse_spec


def start_from(config, splits) -> tuple[nn.Module, Any, dict[str, Any]]:
    """The source model of ``init_from`` (its architecture, its weights), with a new
    classifier when the classes differ; returns (model, its spec, what it came from)."""
    path = config.init_checkpoint or config.init_from
    if not path or str(path).startswith("models:/"):
        raise ShrinkflowError(f"train.init_from {config.init_from}: not resolved to a "
                              "checkpoint (the plan resolves registered models)")
    model, ckpt = load_checkpoint(path)
    if ckpt.get("qat"):
        raise ShrinkflowError(f"train.init_from {config.init_from}: a quantization-aware "
                              "model; transfer from a float one (e.g. the teacher)")
    arch = parse_spec(ckpt["arch"])
    shape = splits.input_shape
    if tuple(ckpt["input_shape"]) != tuple(shape) and \
            (len(shape) != len(ckpt["input_shape"]) or shape[0] != ckpt["input_shape"][0]):
        raise ShrinkflowError(f"train.init_from {config.init_from}: the model takes inputs "
                              f"{tuple(ckpt['input_shape'])}, the data has {tuple(shape)}")
    source = {"uri": config.init_from, "sha256": file_sha256(path),
              "name": ckpt.get("name"), "num_classes": int(ckpt["num_classes"]),
              "classes": list(ckpt.get("classes", []))}
    same = int(ckpt["num_classes"]) == splits.num_classes and \
        list(ckpt.get("classes", [])) == list(splits.meta.get("classes", []))
    if not same:
        replace_head(model, splits.num_classes, shape, seed=config.seed)
    source["head_replaced"] = not same
    model.train()
    return model, arch, source


def replace_head(model: nn.Module, num_classes: int, input_shape: tuple[int, ...],
                 seed: int) -> None:
    """A new classifier (the layer producing the logits) with ``num_classes`` outputs."""
    head = output_layer(model, torch.zeros((1, *input_shape)))
    if not isinstance(head, nn.Linear):
        raise ShrinkflowError(f"train.init_from: the classifier is a {type(head).__name__}; "
                              "replacing it needs a Linear layer")
    name = next(n for n, m in model.named_modules() if m is head)
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        new = nn.Linear(head.in_features, num_classes, bias=head.bias is not None)
    setattr(parent, attr, new)


def freeze(model: nn.Module, prefixes: list[str]) -> list:
    """Keep the layers under ``prefixes`` fixed while training: no gradient for their
    parameters, and their batch-norm layers in inference mode (running statistics used,
    not updated) whatever ``model.train()`` says. Returns the hooks doing the latter;
    remove them after training."""
    names = [n for n, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(n == prefix or n.startswith(prefix + ".") or n.startswith(prefix)
                   for n in names):
            layers = sorted({n.rsplit(".", 1)[0] for n in names})
            raise ShrinkflowError(f"train.freeze: {prefix!r} matches no parameter (layers: "
                                  f"{', '.join(layers[:12])}{' …' if len(layers) > 12 else ''})")
    for n, p in model.named_parameters():
        if any(n.startswith(prefix) for prefix in prefixes):
            p.requires_grad_(False)
    hooks = []
    for n, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and n and \
                any(n.startswith(prefix) for prefix in prefixes):
            hooks.append(m.register_forward_pre_hook(_inference_mode))
    return hooks


def _inference_mode(module: nn.Module, args) -> None:
    module.train(False)
