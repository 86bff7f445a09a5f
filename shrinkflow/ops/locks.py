"""Locks that hold across processes and machines.

- :func:`workspace_lock`: one ``shrinkflow run`` (or DVC stage) at a time per workspace.
- :func:`advisory_lock`: a PostgreSQL session-level advisory lock, for exact promotion
  against a tracking server whose store is PostgreSQL.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from shrinkflow.core.errors import ShrinkflowError


@contextlib.contextmanager
def workspace_lock(state_dir: Path, what: str, wait: float = 0.0) -> Iterator[None]:
    """Hold the workspace's run lock; another holder makes this fail with one line (or
    wait up to ``wait`` seconds)."""
    from filelock import FileLock, Timeout

    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "run.lock"
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=wait)
    except Timeout:
        holder = (state_dir / "run.owner").read_text().strip() if \
            (state_dir / "run.owner").is_file() else "another process"
        raise ShrinkflowError(f"workspace {state_dir.parent} is busy: {holder} holds "
                              f"{path}; wait for it to finish (or pass --wait SECONDS)") from None
    try:
        (state_dir / "run.owner").write_text(f"{what} (pid {os.getpid()}, since "
                                             f"{time.strftime('%H:%M:%S')})\n")
        yield
    finally:
        with contextlib.suppress(OSError):
            (state_dir / "run.owner").unlink()
        lock.release()


def _key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_lock``."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def advisory_lock(dsn: str, name: str, timeout: float = 120.0) -> Iterator[None]:
    """Hold PostgreSQL's advisory lock ``name`` on one session for the whole block."""
    try:
        import psycopg
    except ImportError:
        raise ShrinkflowError("SHRINKFLOW_REGISTRY_LOCK_DSN is set but psycopg is not "
                              "installed; pip install 'shrinkflow[server]'") from None
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        raise ShrinkflowError(f"cannot reach PostgreSQL for the promotion lock "
                              f"({str(exc).splitlines()[0]}); check SHRINKFLOW_REGISTRY_LOCK_DSN") \
            from None
    key = _key(name)
    try:
        deadline = time.monotonic() + timeout
        while not conn.execute("select pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
            if time.monotonic() > deadline:
                raise ShrinkflowError(f"promotion lock {name!r} busy for {timeout:.0f} s; retry")
            time.sleep(0.2)
        try:
            yield
        finally:
            conn.execute("select pg_advisory_unlock(%s)", (key,))
    finally:
        conn.close()
