"""What every task shares: the cache policy, the retry rule, the DVC-stage entry point."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy

from shrinkflow.config import Params, load_params
from shrinkflow.errors import ShrinkflowError
from shrinkflow.workspace import Workspace

# The library code each stage runs: exactly the shrinkflow/ deps of its dvc.yaml stage
# (a test checks), so Prefect's cache and DVC invalidate on the same edits.
STEP_SOURCES: dict[str, tuple[str, ...]] = {
    "prepare": ("shrinkflow/artifacts.py", "shrinkflow/data.py"),
    "train": ("shrinkflow/artifacts.py", "shrinkflow/data.py", "shrinkflow/models.py",
              "shrinkflow/training.py"),
    "compress": ("shrinkflow/artifacts.py", "shrinkflow/compress", "shrinkflow/data.py",
                 "shrinkflow/distill.py", "shrinkflow/models.py", "shrinkflow/training.py",
                 "shrinkflow/variants.py"),
    "convert": ("shrinkflow/artifacts.py", "shrinkflow/compress/quantize.py",
                "shrinkflow/data.py", "shrinkflow/export.py", "shrinkflow/models.py"),
    "validate": ("shrinkflow/artifacts.py", "shrinkflow/data.py", "shrinkflow/models.py",
                 "shrinkflow/training.py", "shrinkflow/validate.py"),
}


def source_hash(sources: tuple[str, ...]) -> str:
    """sha256 (16 hex) of the library files/directories ``sources`` (``shrinkflow/...``),
    read from wherever the package is installed."""
    import hashlib
    from pathlib import Path

    import shrinkflow

    root = Path(shrinkflow.__file__).parent
    h = hashlib.sha256()
    for source in sorted(sources):
        path = root / source.removeprefix("shrinkflow/")
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for f in files:
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


@dataclass
class LibrarySource(CachePolicy):
    """Changes when the library code a step runs changes (TASK_SOURCE alone only sees the
    thin wrapper; the logic lives in ``shrinkflow/``)."""

    sources: tuple[str, ...] = ()

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> str | None:
        return source_hash(self.sources)


def step_options(stage: str) -> dict[str, Any]:
    """Task options of a cached step: a re-run with the same inputs, wrapper and library
    code returns the stored record instead of recomputing."""
    return {
        "cache_policy": INPUTS + TASK_SOURCE + LibrarySource(sources=STEP_SOURCES[stage]),
        "persist_result": True,
        "retries": 1,
        "retry_delay_seconds": 2,
        "retry_condition_fn": retry_unless_user_error,
    }


# Prefect's thread pool is large (a task waiting on its parent holds a thread), so the
# number of compute steps running at once is bounded here instead, by the flow.
_slots = threading.BoundedSemaphore(2)


def set_parallel_steps(n: int) -> None:
    global _slots
    _slots = threading.BoundedSemaphore(n)


@contextlib.contextmanager
def compute_slot() -> Iterator[None]:
    slots = _slots
    with slots:
        yield


def retry_unless_user_error(task, task_run, state) -> bool:
    """Retry transient failures; a ShrinkflowError (bad input) fails the same way again."""
    try:
        state.result()
    except ShrinkflowError:
        return False
    except Exception:
        return True
    return False


def stage_main(run: Callable[[Params, Workspace], Any], argv: list[str] | None = None) -> int:
    """Entry point of ``python -m tasks.<step>`` (a dvc.yaml stage) in the current directory.

    Reads ./params.yaml, runs the step, prints a one-line error (no traceback) on failure.
    """
    from shrinkflow.env import setup

    setup()
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = sys.argv[1:] if argv is None else argv
    try:
        ws = Workspace.at(".")
        params = load_params(ws.params_file)
        result = run(params, ws, *argv)
    except ShrinkflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _report(result)
    return 0


def _report(result: Any) -> None:
    """One short line per stage output (the files hold the details)."""
    items = result if isinstance(result, list) else [result]
    for item in items:
        if hasattr(item, "path") and hasattr(item, "sha256"):
            print(f"wrote {item.path} (sha256 {item.sha256[:16]})")
    if isinstance(result, dict):
        print(f"validated: {', '.join(result)}")


def chain_step_task(kind: str):
    """The Prefect task of one compression step (``prune``, ``finetune``, ``quantize``,
    ``distill``): ``(parent, step, data, out_path, threads) -> ModelArtifact``."""
    from prefect import task

    from shrinkflow.artifacts import DataArtifact, ModelArtifact
    from shrinkflow.compress import run_step

    def step_fn(parent: ModelArtifact, step: Any, data: DataArtifact, out_path: str,
                threads: int) -> ModelArtifact:
        with compute_slot():
            return run_step(parent, step, data, out_path, threads)

    step_fn.__name__ = step_fn.__qualname__ = kind
    step_fn.__doc__ = f"Compression step {kind!r}: shrinkflow.compress.run_step."
    return task(name=kind, **step_options("compress"))(step_fn)
