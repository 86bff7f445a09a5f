"""What a deployment target is: how to convert a trained model into its format, how to
run that artifact, and which packages it needs.

A target module subclasses :class:`Target`; defining the class registers it (as an
Olive pass does), so adding a runtime is one module.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from shrinkflow.core.config import Int, Section
from shrinkflow.core.errors import ShrinkflowError

Runner = Callable[[np.ndarray], np.ndarray]  # a batch of raw inputs -> float32 logits

_TARGETS: dict[str, type[Target]] = {}

# What every non-ONNX artifact directory holds beside the model file(s): its name,
# classes, input shape and how it was made (the ONNX file keeps this in its metadata).
SIDECAR = "shrinkflow.json"


class TargetParams(Section):
    """A deployment target in ``params.yaml`` (``targets:``); each target module declares
    its own subclass with ``runtime: Literal[<name>]`` and its options."""

    runtime: str
    # Intra-op threads of this runtime for validation and latency (None: validate.threads).
    threads: Int | None = Field(None, ge=1, le=256)


class Target:
    """A runtime models are deployed to."""

    name: ClassVar[str]
    params: ClassVar[type[TargetParams]]
    # pip extra that installs the runtime (None: a core dependency).
    extra: ClassVar[str | None] = None
    # Python modules that must import for the target to work (checked before any run).
    modules: ClassVar[tuple[str, ...]] = ()
    # Where conversion starts: the torch model ("torch") or the ONNX file of the same
    # model as made for ONNX Runtime ("onnx").
    source: ClassVar[str] = "torch"
    # The artifact's format (records, lineage) and the file a runner loads.
    format: ClassVar[str] = "onnx"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            _TARGETS[cls.name] = cls

    @classmethod
    def check_available(cls) -> None:
        """Raise one line naming the extra when the runtime's packages are missing (found,
        not imported: some take seconds to import)."""
        import importlib.util

        for module in cls.modules:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                extra = f"pip install 'shrinkflow[{cls.extra}]'" if cls.extra else "reinstall"
                raise ShrinkflowError(f"target {cls.name}: package {module!r} is not installed; "
                                      f"{extra} (make setup installs every extra)") from None

    @classmethod
    def convert(cls, out_dir: Path, *, module: Any = None, input_shape: tuple[int, ...] = (),
                onnx_path: Path | None = None, int8: bool = False,
                calibration: np.ndarray | None = None, options: TargetParams | None = None
                ) -> Path:
        """Write the artifact into ``out_dir``; return its path (a file or a directory).
        ``module`` takes raw inputs (preprocessing inside); ``int8`` asks for the
        runtime's int8 form, calibrated on ``calibration`` (raw inputs) if it needs it."""
        raise NotImplementedError

    @classmethod
    def load(cls, path: str, threads: int) -> Runner:
        raise NotImplementedError

    @classmethod
    def versions(cls) -> dict[str, str]:
        return {}


def _discover() -> None:
    import shrinkflow.targets as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name != "base":
            importlib.import_module(f"{pkg.__name__}.{info.name}")


def get(name: str) -> type[Target]:
    if name not in _TARGETS:
        _discover()
    if name not in _TARGETS:
        raise ShrinkflowError(f"unknown target {name!r} (one of {', '.join(names())})")
    return _TARGETS[name]


def names() -> list[str]:
    _discover()
    return sorted(_TARGETS)


def param_classes() -> tuple[type[TargetParams], ...]:
    """Every target's params class (the union ``targets:`` accepts)."""
    _discover()
    return tuple(t.params for _, t in sorted(_TARGETS.items()))


def model_file(path: str | Path, suffix: str) -> Path:
    """The model file in an artifact: ``path`` itself, or the one ``*suffix`` file in it."""
    p = Path(path)
    if p.is_file():
        return p
    found = sorted(p.glob(f"*{suffix}"))
    if not found:
        raise ShrinkflowError(f"{p}: no {suffix} model file in this artifact")
    return found[0]


def batched(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int = 1024) -> np.ndarray:
    """Logits of ``run`` over ``x`` in batches."""
    outs = [run(np.ascontiguousarray(x[i:i + batch])) for i in range(0, len(x), batch)]
    return np.concatenate(outs).astype(np.float32)
