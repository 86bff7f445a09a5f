"""Imported by each local Dask worker process when it starts (its ``preload``): what
every step needs loads before its first step is given, on every worker at once. A
worker that was idle at the start of a run otherwise spent ~2.4 s importing before its
first step (measured on the default pipeline).

Prefect's task engine loads before the worker registers: a step arrives as a pickle of
Prefect objects, and unpickling it imports Prefect on the worker's event loop. Prefect's
modules import each other in cycles, so two threads importing them at once can
deadlock; Python then breaks the cycle by failing one import ("Failed to initialize
plugins: deadlock detected by _ModuleLock('prefect.client.schemas.objects')" in every
run's log, when this thread loaded Prefect too). Torch and the step registry, which
import nothing that imports them back, load in the background: the worker registers
while they do, and a step that arrives earlier waits on their import locks."""

from __future__ import annotations

import threading


def _load() -> None:
    import torch  # noqa: F401
    from shrinkflow.tasks import steps  # noqa: F401 (its import registers every step kind)


def dask_setup(worker) -> None:  # noqa: ARG001 (Dask's preload hook)
    import prefect.task_engine  # noqa: F401

    threading.Thread(target=_load, name="shrinkflow-preload", daemon=True).start()
