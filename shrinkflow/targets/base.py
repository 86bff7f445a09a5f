"""What a deployment target is: how to convert a trained model into its format, how to
run that artifact, and which packages it needs.

A target module subclasses :class:`Target`; defining the class registers it (as an
Olive pass does), so adding a runtime is one module.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import ClassVar

import numpy as np

from shrinkflow.core.errors import ShrinkflowError

Runner = Callable[[np.ndarray], np.ndarray]  # a batch of raw inputs -> float32 logits

_TARGETS: dict[str, type[Target]] = {}


class Target:
    """A runtime models are deployed to."""

    name: ClassVar[str]
    # pip extra that installs the runtime (None: a core dependency).
    extra: ClassVar[str | None] = None
    # Python modules that must import for the target to work.
    modules: ClassVar[tuple[str, ...]] = ()
    # Where conversion starts: the torch checkpoint, or the ONNX file of the same model.
    source: ClassVar[str] = "torch"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            _TARGETS[cls.name] = cls

    @classmethod
    def check_available(cls) -> None:
        """Raise one line naming the extra when the runtime's packages are missing."""
        for module in cls.modules:
            try:
                importlib.import_module(module)
            except ImportError:
                extra = f"pip install 'shrinkflow[{cls.extra}]'" if cls.extra else "reinstall"
                raise ShrinkflowError(f"target {cls.name}: package {module!r} is not installed; "
                                      f"{extra} (make setup installs every extra)") from None

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


def batched(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int = 1024) -> np.ndarray:
    """Logits of ``run`` over ``x`` in batches."""
    outs = [run(np.ascontiguousarray(x[i:i + batch])) for i in range(0, len(x), batch)]
    return np.concatenate(outs).astype(np.float32)
