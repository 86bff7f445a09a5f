"""Imported by each local Dask worker process when it starts (its ``preload``): what
every step needs (torch, the step registry, Prefect's task engine) loads in the
background while the flow starts, on every worker at once, instead of inside the first
step each worker is given. A worker that was idle at the start of a run otherwise spent
~2.4 s importing before its first step (measured on the default pipeline). The worker
registers at once; a step that arrives earlier waits on Python's import lock."""

from __future__ import annotations

import threading


def _load() -> None:
    import prefect.task_engine  # noqa: F401
    import torch  # noqa: F401
    from shrinkflow.tasks import steps  # noqa: F401 (its import registers every step kind)


def dask_setup(worker) -> None:  # noqa: ARG001 (Dask's preload hook)
    threading.Thread(target=_load, name="shrinkflow-preload", daemon=True).start()
