"""Prefect's DaskTaskRunner, less two costs it pays on every task it submits.

Measured with py-spy over a cold default run (93 step tasks, 2 workers, AVX2 AMD EPYC),
the flow's process spent ~20 s in ``PrefectDaskClient.submit``, taking a core from the
steps:

- ``SettingsContext.serialize``: Prefect ships its whole settings model with every task
  and dumps it anew each time (46 ms idle, more under load), though the flow's settings
  do not change while it runs. Here the dump of one settings context is kept and shipped
  again (see :func:`reuse_settings_dumps`); on the worker, ``shrinkflow.tasks.worker``
  likewise builds the settings from that dump once, not once per task.
- Dask's ``Client.submit`` with ``pure=True`` (Prefect's default) tokenizes the function
  and every argument (the plan step, its parents' records, the serialized context) to
  make the key: ~70 ms a step. Prefect gives every submission a new task-run id, so such
  a key is never shared; ``pure=False`` makes it from a fresh id without hashing.

Tasks submitted here run exactly as with Prefect's runner: same parameters, context,
dependencies and states.
"""

from __future__ import annotations

import functools
from typing import Any

from prefect.context import SettingsContext
from prefect_dask import DaskTaskRunner
from prefect_dask.task_runners import PrefectDaskFuture
from shrinkflow.tasks.worker import wrap_once


class TaskRunner(DaskTaskRunner):
    """A :class:`prefect_dask.DaskTaskRunner` whose submissions skip Dask's tokenizing
    and reuse the dump of the flow's settings (see the module's docstring)."""

    def __enter__(self):
        reuse_settings_dumps()
        return super().__enter__()

    def submit(self, task, parameters: dict[str, Any], wait_for=None, dependencies=None):
        # DaskTaskRunner.submit, with pure=False.
        if not self._started:
            raise RuntimeError("The task runner must be started before submitting work.")
        future = self.client.submit(
            task, parameters=self._optimize_futures(parameters),
            wait_for=self._optimize_futures(wait_for) if wait_for else None,
            dependencies=dependencies, return_type="state", pure=False)
        return PrefectDaskFuture(wrapped_future=future, task_run_id=future.task_run_id)


def reuse_settings_dumps() -> None:
    """``SettingsContext.serialize`` keeps its last result and returns it again for the
    same context object (a context is immutable: settings change by entering a new one).
    The dump is only read (pickled into each task's submission). Idempotent."""
    wrap_once(SettingsContext, "serialize", _reusing_dumps, "_shrinkflow_reused")


def _reusing_dumps(serialize):
    last: list[tuple[SettingsContext, bool, dict[str, Any]]] = [(None, True, {})]

    @functools.wraps(serialize)
    def reused(self: SettingsContext, include_secrets: bool = True) -> dict[str, Any]:
        context, secrets, dump = last[0]  # one read: another thread may replace it
        if context is self and secrets == include_secrets:
            return dump
        dump = serialize(self, include_secrets=include_secrets)
        last[0] = (self, include_secrets, dump)  # holds the context: no other gets its id
        return dump

    return reused
