"""Where a flow's compute runs: a Dask cluster of worker processes.

By default a ``distributed.LocalCluster`` of ``base.parallel_steps`` processes, one
thread each (torch's intra-op threads are fixed inside each step), started once per
run; with an address, an existing cluster. Worker processes report their task runs to
the same Prefect API as the flow: when the flow uses a temporary local API, its URL is
exported before the cluster starts so the workers inherit it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

log = logging.getLogger("shrinkflow")

QUIET_DASK = {"DASK_LOGGING__DISTRIBUTED": "warning",
              "DASK_DISTRIBUTED__WORKER__DAEMON": "false",
              "DASK_DISTRIBUTED__ADMIN__TICK__LIMIT": "30s"}


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    """The Prefect API URL this process and its workers use: the configured one, or a
    temporary local server started here (and stopped after)."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if url:
        old = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = url  # settings set in-process (test harness) too
        try:
            yield url
        finally:
            if old is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = old
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start(timeout=int(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
                                            "180")))
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        yield server.api_url
    finally:
        _drain_logs()
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


def _drain_logs() -> None:
    """Send buffered flow and task logs before the temporary API goes away."""
    with contextlib.suppress(Exception):
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
    with contextlib.suppress(Exception):
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all(timeout=10)


def task_runner(workers: int, address: str | None = None):
    """A DaskTaskRunner: on the cluster at ``address``, else a local cluster of
    ``workers`` single-threaded processes."""
    from prefect_dask import DaskTaskRunner

    for key, value in QUIET_DASK.items():
        os.environ.setdefault(key, value)
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": workers, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": None,
                                          "silence_logs": logging.WARNING})
