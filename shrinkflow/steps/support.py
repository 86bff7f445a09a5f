"""What each compression step supports, checked before compute (preflight).

- unstructured pruning (magnitude, random, movement), fine-tuning and distillation work
  on any module;
- structured pruning works on whatever torch-pruning's dependency graph can trace (tried
  on a copy: the pruned copy must still give one logit per class);
- quantization-aware training works on the layer types it knows (``models.qat``);
- ONNX Runtime dynamic/static quantization acts on the ONNX file: any model that exports.

A refusal is one line naming the step and the layer.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from shrinkflow.core.config import Section
from shrinkflow.models.qat import qat_refusal


def refusal(step: Section, model: nn.Module, input_shape: tuple[int, ...],
            num_classes: int) -> str | None:
    """Why ``step`` cannot act on ``model`` (None: it can)."""
    kind = getattr(step, "kind", "")
    method = getattr(step, "method", "")
    if kind == "quantize" and method == "qat":
        why = qat_refusal(model)
        return f"quantize qat: {why}" if why else None
    if kind == "prune" and method == "structured":
        return _structured_refusal(model, input_shape, num_classes)
    return None


def _structured_refusal(model: nn.Module, input_shape: tuple[int, ...],
                        num_classes: int) -> str | None:
    from shrinkflow.core.errors import ShrinkflowError
    from shrinkflow.steps.prune import structured_prune

    trial = copy.deepcopy(model).eval()
    try:
        structured_prune(trial, 0.25, input_shape)
        with torch.no_grad():
            out = trial(torch.zeros((2, *input_shape)))
    except ShrinkflowError as exc:
        return str(exc)
    except Exception as exc:
        layer = _failing_layer(exc)
        return (f"prune structured: torch-pruning cannot trace {layer}"
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); use an "
                "unstructured method (magnitude, random, movement) or distill")
    if tuple(out.shape) != (2, num_classes):
        return (f"prune structured: the pruned model gives outputs of shape "
                f"{tuple(out.shape)}, not (N, {num_classes}): torch-pruning's graph does not "
                "cover every layer; use an unstructured method or distill")
    return None


def _failing_layer(exc: Exception) -> str:
    """The module named in a traceback's innermost frame that belongs to a layer."""
    tb = exc.__traceback__
    name = ""
    while tb is not None:
        obj = tb.tb_frame.f_locals.get("self")
        if isinstance(obj, nn.Module):
            name = type(obj).__name__
        tb = tb.tb_next
    return f"layer {name} " if name else "the model "
