"""The step registry: every step kind is one module that declares its typed config and
its run function, and registers both here with :func:`step`.

A run function has one shape: ``run(config, ctx, **inputs) -> record``. ``inputs`` are
the records of the steps it reads (by role: ``data``, ``model``, ``export``, ...);
``ctx.out_dir`` is the empty directory it writes its output into. The plan, the
executor, the Prefect tasks, the DVC stages and the docs all come from this registry.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shrinkflow.core.config import Section
from shrinkflow.core.errors import ShrinkflowError


@dataclass(frozen=True)
class Context:
    """What a running step may know besides its config and inputs."""

    out_dir: Path  # an empty directory for this step's output (in the step store)
    threads: int  # torch intra-op threads (fixed: results must not depend on the load)
    model: str  # the model this step serves ("teacher", "p80_ft", ...), for logs


@dataclass(frozen=True)
class StepKind:
    name: str  # one name everywhere: params.yaml, dvc.yaml stage, module, task, MLflow tag
    config: type[Section]
    run: Callable[..., Any]
    module: str  # the module that declares it (its import closure is the step's code)
    stage: str  # the dvc.yaml stage that runs it
    doc: str  # one line, for the docs list


_KINDS: dict[str, StepKind] = {}


def step(name: str, config: type[Section], stage: str) -> Callable[[Callable], Callable]:
    """Register ``fn`` as the run function of step kind ``name``."""

    def register(fn: Callable) -> Callable:
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else name
        _KINDS[name] = StepKind(name=name, config=config, run=fn, module=fn.__module__,
                                stage=stage, doc=doc)
        return fn

    return register


def _discover() -> None:
    import shrinkflow.steps as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{info.name}")


def kinds() -> dict[str, StepKind]:
    """Every registered step kind (importing every module of ``shrinkflow.steps``)."""
    _discover()
    return dict(_KINDS)


def kind(name: str) -> StepKind:
    if name not in _KINDS:
        _discover()
    if name not in _KINDS:
        raise ShrinkflowError(f"unknown step {name!r} (one of {', '.join(sorted(_KINDS))})")
    return _KINDS[name]
