"""Where a flow's compute runs: a Dask cluster of worker processes.

By default a ``distributed.LocalCluster`` of ``base.parallel_steps`` processes, one
thread each (torch's intra-op threads are fixed inside each step), started once per
run; with an address, an existing cluster. Worker processes report their task runs to
the same Prefect API as the flow: when the flow uses a temporary local API, its URL is
exported before the cluster starts so the workers inherit it.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("shrinkflow")

QUIET_DASK = {"DASK_LOGGING__DISTRIBUTED": "warning",
              "DASK_DISTRIBUTED__WORKER__DAEMON": "false",
              "DASK_DISTRIBUTED__ADMIN__TICK__LIMIT": "30s"}


# The local cluster's scheduler runs in this process. Two of its defaults fit many small
# tasks of one kind, not a plan of steps whose results are a few bytes (the files are on
# disk):
# - queuing: a kind with more steps than twice the threads (five prunes on 2 workers) is
#   held back on the scheduler and handed out only when a worker runs short of work;
#   every other step is assigned at once, so the held-back one waited for the end of the
#   run and its whole chain (fine-tune, three conversions) ran alone at the end (seen in
#   every cold 2-worker run: 40 s late; the scheduler's own log). Off: each step goes to
#   a worker when it is ready, and the worker runs its ready steps in priority order.
# - work stealing every 1 s: steps wait on the worker that holds their parent's result
#   until a steal; every 0.1 s instead.
# And one default of its workers' nanny: MALLOC_TRIM_THRESHOLD_=65536 in every worker's
# environment, so that glibc hands freed memory back to the system at once. Setting it
# also fixes glibc's mmap threshold at 128 KiB (it otherwise grows to fit the program),
# so every tensor above that size (a batch of activations) was mapped, faulted in page
# by page and unmapped again, on every use: the Fashion-MNIST teacher's epoch took 125 s
# on a worker (most of it in the kernel), 68 s without; with 1 thread, 514 against 315 ms
# a training step. The workers keep glibc's own defaults; the other
# variables (one OpenMP/MKL/OpenBLAS thread) stay, each step sets torch's thread count.
WORKER_ENVIRON = {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1}
LOCAL_CLUSTER = {"distributed.scheduler.worker-saturation": float("inf"),
                 "distributed.scheduler.work-stealing-interval": "100ms",
                 "distributed.nanny.pre-spawn-environ": WORKER_ENVIRON}


class TemporaryApi:
    """A temporary local Prefect API server, as Prefect's own ``SubprocessASGIServer``
    starts it (uvicorn over ``prefect.server.api.server:create_app``, UI off), but
    without importing the server into this process and without waiting: it comes up
    while this process loads the flow. :meth:`wait` blocks until it answers."""

    def __init__(self) -> None:
        import importlib.util
        import tempfile

        spec = importlib.util.find_spec("prefect")
        self._app_dir = str(Path(next(iter(spec.submodule_search_locations))).parent)
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the server)
        self._spawn()
        atexit.register(self.stop)

    def _spawn(self) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
               "PREFECT__SERVER_FINAL": "1"}
        env.pop("PREFECT_API_URL", None)
        self.proc: subprocess.Popen | None = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", self._app_dir, "--factory",
             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port",
             str(self.port), "--log-level", "error", "--lifespan", "on"],
            env=env, stdout=subprocess.DEVNULL, stderr=self._log)

    def wait(self, timeout: float) -> str:
        """The API URL, once its health check answers."""
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.proc.poll() if self.proc else -1
            if code == 3:  # the port was taken meanwhile: another one
                self._spawn()
            elif code is not None:
                self._log.seek(0)
                tail = self._log.read().decode(errors="replace").strip().splitlines()[-3:]
                raise RuntimeError(f"the temporary Prefect API exited with code {code}: "
                                   + " | ".join(tail))
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self.url
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the temporary Prefect API did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self._log.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def configured_api() -> str:
    """The Prefect API URL set by environment or profile ('' when there is none)."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or ""


def prestart() -> TemporaryApi | None:
    """Start the temporary API now, when no API is configured, so that it comes up while
    the flow's modules load (pass it to :func:`prefect_api`).

    It is spawned before this process imports Prefect's settings to see whether an API
    is configured (the import alone is ~1.5 s of CPU, and the whole run waits for the
    API), and stopped at once if one is: in a profile or a settings file. An API in the
    environment is seen without Prefect."""
    if os.environ.get("PREFECT_API_URL"):
        return None
    api = TemporaryApi()
    if configured_api():
        api.stop()
        return None
    return api


@contextlib.contextmanager
def prefect_api(started: TemporaryApi | None = None) -> Iterator[str]:
    """The Prefect API URL this process and its workers use: the configured one, or a
    temporary local server (``started`` by :func:`prestart`, or started here), stopped
    after."""
    url = "" if started is not None else configured_api()
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
    server = started or TemporaryApi()
    try:
        url = server.wait(float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
                                               "180")))
        os.environ["PREFECT_API_URL"] = url
        yield url
    finally:
        _drain_logs()
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


@contextlib.contextmanager
def untagged_tasks() -> Iterator[None]:
    """Task runs started inside carry no tags; the flow run keeps its own.

    For a tagged task run, Prefect's task engine first asks the API for the tags'
    concurrency slots (tag-based concurrency limits), even when no limit exists. On the
    default pipeline that call stalled the calling process for about 2 s at a time: 9
    times in one cold 2-worker run, ~18 s of worker time. Tag-based concurrency limits
    therefore do not apply to shrinkflow's task runs (use ``base.parallel_steps``)."""
    from prefect.context import TagsContext

    with TagsContext(current_tags=set()):
        yield


def release_local_cluster() -> threading.Thread | None:
    """Close the flow's local Dask cluster in the background, once every step is done
    (the record-keeping after compute runs in the flow's process). Its workers took ~3 s
    to shut down at the flow's end (their interpreters unload torch, ONNX Runtime,
    OpenVINO and LiteRT); now that overlaps the recording. Returns the thread to join
    before the flow ends; None when the cluster is not the flow's own (an address)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    try:
        client = ctx.task_runner.client if ctx is not None else None
    except (AttributeError, RuntimeError):  # not a started DaskTaskRunner
        return None
    cluster = getattr(client, "cluster", None)
    if cluster is None:
        return None

    def close() -> None:
        # Closed on purpose: a worker still unloading its libraries after Dask's 4 s is
        # killed, and the scheduler's notes about its closed connections are expected.
        quiet = [logging.getLogger(n) for n in ("distributed.nanny", "distributed.batched",
                                                "distributed.scheduler", "distributed.core")]
        levels = [q.level for q in quiet]
        for q in quiet:
            q.setLevel(logging.ERROR)
        try:
            with contextlib.suppress(Exception):
                client.close()
                cluster.close()
        finally:
            for q, level in zip(quiet, levels, strict=True):
                q.setLevel(level)

    thread = threading.Thread(target=close, name="shrinkflow-cluster-close", daemon=True)
    thread.start()
    return thread


def _drain_logs() -> None:
    """Send buffered flow and task logs before the temporary API goes away."""
    with contextlib.suppress(Exception):
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
    with contextlib.suppress(Exception):
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all(timeout=10)


def _cluster_kwargs(workers: int) -> dict:
    return {"n_workers": workers, "threads_per_worker": 1, "processes": True,
            "dashboard_address": None, "silence_logs": logging.WARNING,
            "preload": ["shrinkflow.tasks.worker"]}


def _configure_dask(local: bool) -> None:
    """Dask's logging (read when dask is first imported) and, for a cluster of our own,
    its scheduler's and nanny's settings (``LOCAL_CLUSTER``)."""
    for key, value in QUIET_DASK.items():
        os.environ.setdefault(key, value)
    if local:
        import dask
        import distributed  # noqa: F401 (its defaults load first: they would merge into ours)

        dask.config.set(LOCAL_CLUSTER)


def task_runner(workers: int, address: str | None = None):
    """A Dask task runner (:class:`shrinkflow.flows.daskrunner.TaskRunner`): on the
    cluster at ``address``, else a local cluster of ``workers`` single-threaded processes
    (the one :func:`prestart_cluster` started, if it matches: see :func:`local_cluster`)."""
    _configure_dask(local=not address)
    from shrinkflow.flows.daskrunner import TaskRunner

    if address:
        return TaskRunner(address=address)
    return TaskRunner(cluster_class=f"{__name__}.local_cluster",
                      cluster_kwargs=_cluster_kwargs(workers))


class ClusterStart:
    """A local cluster coming up in a background thread: its workers start and load
    Prefect, torch and the steps while this process does the rest of a run's start
    (preflight, the tracking store, the flow run). The task runner adopts it on its
    first step (:func:`local_cluster`); one never adopted is closed by
    :func:`discard_cluster` (or at exit)."""

    def __init__(self, workers: int, env: dict[str, str]) -> None:
        self.kwargs, self.env = _cluster_kwargs(workers), env
        self.cluster = None
        self.error: BaseException | None = None
        self.seconds = 0.0
        self._done = threading.Event()
        threading.Thread(target=self._start, name="shrinkflow-cluster-start",
                         daemon=True).start()

    def _start(self) -> None:
        start = time.perf_counter()
        try:
            from distributed import LocalCluster

            self.cluster = LocalCluster(**self.kwargs, env=self.env)
        except BaseException as exc:  # noqa: BLE001 (re-raised where it is adopted)
            self.error = exc
        finally:
            self.seconds = time.perf_counter() - start
            self._done.set()

    def wait(self):
        self._done.wait()
        if self.error is not None:
            raise self.error
        return self.cluster

    def close(self) -> None:
        self._done.wait()
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close()


_prestarted: ClusterStart | None = None
# How the last local cluster came up: seconds to start (in the background when it was
# prestarted) and seconds the first step waited for it.
cluster_timing: dict[str, float] = {}


def prestart_cluster(workers: int, api: TemporaryApi | None) -> ClusterStart:
    """Start the local cluster now, in the background (its workers report to ``api``
    when the run uses a temporary one); the one already started, if it is the same."""
    global _prestarted
    env = {"PREFECT_API_URL": api.url} if api is not None else {}
    if _prestarted is not None and (_prestarted.kwargs, _prestarted.env) == \
            (_cluster_kwargs(workers), env):
        return _prestarted
    discard_cluster()
    _configure_dask(local=True)
    _prestarted = ClusterStart(workers, env)
    atexit.register(discard_cluster)
    return _prestarted


def discard_cluster() -> None:
    """Close a prestarted cluster that no task runner adopted."""
    global _prestarted
    started, _prestarted = _prestarted, None
    if started is not None:
        started.close()


def local_cluster(**kwargs):
    """The cluster class the task runner instantiates on its first step: the prestarted
    cluster when it has these settings and reports to this process's Prefect API
    (waiting for it to be up), else a new ``distributed.LocalCluster``."""
    global _prestarted
    from distributed import LocalCluster

    start = time.perf_counter()
    started, _prestarted = _prestarted, None
    if started is not None:
        api = started.env.get("PREFECT_API_URL", os.environ.get("PREFECT_API_URL"))
        if started.kwargs == kwargs and api == os.environ.get("PREFECT_API_URL"):
            cluster = started.wait()
            cluster_timing.update(start=round(started.seconds, 2),
                                  waited=round(time.perf_counter() - start, 2))
            return cluster
        started.close()  # another run's settings (or the API moved to another port)
    cluster = LocalCluster(**kwargs)
    cluster_timing.update(start=round(time.perf_counter() - start, 2),
                          waited=round(time.perf_counter() - start, 2))
    return cluster
