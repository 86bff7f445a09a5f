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

import contextlib
import functools
import os
import pickle
import ssl
import sys
import threading
from typing import Any


def _load() -> None:
    lower_thread_priority()
    import torch  # noqa: F401
    from shrinkflow.tasks import steps  # noqa: F401 (its import registers every step kind)


def _load_engine() -> None:
    lower_thread_priority()
    import prefect.task_engine  # noqa: F401


def dask_setup(worker) -> None:  # noqa: ARG001 (Dask's preload hook)
    # In a thread of its own only for its lower priority (this one waits for it).
    engine = threading.Thread(target=_load_engine, name="shrinkflow-preload-engine")
    engine.start()
    engine.join()
    share_tls_context()
    reuse_hydrated_settings()
    threading.Thread(target=_load, name="shrinkflow-preload", daemon=True).start()


def lower_thread_priority(by: int = 10) -> None:
    """Lower this thread's CPU priority (Linux: a thread's nice value is its own).

    A run starts its workers while the temporary Prefect API comes up, and the flow can
    start only once the API answers; the workers' imports (~7 s of CPU each: Prefect,
    torch, the steps) took about a core meanwhile, and the API answered ~19 s after its
    start, against 8.5 s on an idle machine (AVX2 AMD EPYC, 2 cores). At a lower
    priority they take what the API and the flow's process leave; the first step waits
    for them only if it comes sooner. The thread ends with its imports, so the steps run
    at the worker's own priority."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + by)


def wrap_once(owner: Any, name: str, wrap, flag: str) -> None:
    """Replace ``owner.<name>`` with ``wrap(owner.<name>)``, marked with ``flag``; a
    second call finds the mark and leaves it (a process installs each wrapper once)."""
    current = getattr(owner, name)
    if getattr(current, flag, False):
        return
    wrapped = wrap(current)
    setattr(wrapped, flag, True)
    setattr(owner, name, wrapped)


def share_tls_context() -> None:
    """Prefect's API clients, built with no ``verify`` of their own, share one TLS context.

    Each client Prefect builds makes a new ``ssl.SSLContext`` and loads certifi's whole CA
    bundle into it (45-55 ms of CPU on an AVX2 AMD EPYC core), and a task run on a Dask
    worker builds two clients: two bundles parsed per step, ~8 s of a cold default run's
    CPU over its 93 steps. The shared context is made exactly as Prefect makes its own,
    from the settings at the time (insecure-skip-verify, the API's certificate file), so
    a client sees no difference; a client given ``verify`` keeps it. Idempotent."""
    from prefect.client import orchestration

    for cls in (orchestration.PrefectClient, orchestration.SyncPrefectClient):
        wrap_once(cls, "__init__", _with_shared_context, "_shrinkflow_shared_tls")


@functools.lru_cache(maxsize=4)
def _context(insecure: bool, cert_file: str | None) -> ssl.SSLContext:
    if insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    import certifi

    return ssl.create_default_context(cafile=cert_file or certifi.where())


def _with_shared_context(init):
    @functools.wraps(init)
    def wrapped(self, *args: Any, httpx_settings: dict[str, Any] | None = None,
                **kwargs: Any) -> None:
        from prefect import settings as ps

        settings = dict(httpx_settings or {})
        if "verify" not in settings:
            settings["verify"] = _context(bool(ps.PREFECT_API_TLS_INSECURE_SKIP_VERIFY.value()),
                                          ps.PREFECT_API_SSL_CERT_FILE.value() or None)
        init(self, *args, httpx_settings=settings, **kwargs)

    return wrapped


def reuse_hydrated_settings() -> None:
    """A task's settings, shipped from the flow as a dump, are built once per worker.

    Prefect's task engine builds a ``SettingsContext`` from the dump that comes with
    every task (``hydrated_context``): the full settings model, validated anew each time
    and read through the environment and profile files (73 ms idle on an AVX2 AMD EPYC
    core; py-spy: ~19 s of the workers' time over a cold default run). The flow ships
    the same dump with each of its tasks (``shrinkflow.flows.daskrunner``), so a worker
    builds the settings from one dump once and enters a new context around the same
    settings for each task. The key holds the dump and this process's ``PREFECT_*``
    environment, everything the settings are built from beside the profile files.
    Idempotent."""
    from prefect import task_engine

    wrap_once(task_engine, "hydrated_context", _reusing_settings, "_shrinkflow_reused")


def _reusing_settings(original):
    from prefect import context

    built: dict[bytes, Any] = {}

    @contextlib.contextmanager
    def hydrated(serialized_context: dict[str, Any] | None = None, client=None):
        dump = (serialized_context or {}).get("settings_context")
        if not dump:
            with original(serialized_context, client):
                yield
            return
        env = sorted((k, v) for k, v in os.environ.items() if k.startswith("PREFECT_"))
        key = pickle.dumps((dump, env))
        entry = built.get(key)  # one read: another task's thread may clear the dict
        if entry is None:
            if len(built) >= 8:  # settings that keep changing: keep the newest only
                built.clear()
            made = context.SettingsContext(**dump)
            entry = built[key] = (made.profile, made.settings)
        profile, settings = entry
        with context.SettingsContext(profile=profile, settings=settings), \
                original({**serialized_context, "settings_context": {}}, client):
            yield

    return hydrated
