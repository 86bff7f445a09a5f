"""Compression steps. Each is one function ``(parent, step, data, out_path, threads) ->
ModelArtifact`` registered under its step name; a new method is one function plus one
entry here (and its typed step config in ``shrinkflow.config``).

ONNX Runtime's dynamic and static quantization act on the converted ONNX file, not on
a checkpoint: ``convert`` applies them (see ``shrinkflow.compress.quantize``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from shrinkflow.artifacts import DataArtifact, ModelArtifact
from shrinkflow.config import Section


def _prune(*args):
    from shrinkflow.compress.prune import prune

    return prune(*args)


def _finetune(*args):
    from shrinkflow.training import finetune

    return finetune(*args)


def _quantize(*args):
    from shrinkflow.compress.quantize import qat

    return qat(*args)


def _distill(*args):
    from shrinkflow.distill import distill

    return distill(*args)


StepFn = Callable[[ModelArtifact, Section, DataArtifact, "str | Path", int], ModelArtifact]
STEP_FUNCTIONS: dict[str, StepFn] = {
    "prune": _prune,
    "finetune": _finetune,
    "quantize": _quantize,  # torch-level only for method qat; see module docstring
    "distill": _distill,
}


def run_step(parent: ModelArtifact, step: Section, data: DataArtifact, out_path: str | Path,
             threads: int = 2) -> ModelArtifact:
    """Apply one torch-level step to ``parent``, writing a checkpoint to ``out_path``;
    the record's summary carries the step's wall time (``step_seconds``)."""
    start = time.perf_counter()
    out = STEP_FUNCTIONS[step.kind](parent, step, data, out_path, threads)
    seconds = round(time.perf_counter() - start, 3)
    return out.model_copy(update={"summary": {**out.summary, "step_seconds": seconds}})
