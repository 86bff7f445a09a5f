"""A local Prefect server and ``shrinkflow serve`` as child processes.

Started in their own process groups, waited on over HTTP and stopped by PID, so nothing
is left running. The schedule integration test and ``bench/schedule.py`` drive the
scheduled flow through these; this module talks to Prefect only over its REST API.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from shrinkflow.core.errors import ShrinkflowError

STARTUP_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str,
               proc: subprocess.Popen | None = None) -> None:
    """Poll ``predicate`` every second (its exceptions count as "not yet")."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ShrinkflowError(f"{what}: process exited with {proc.returncode}")
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(1)
    raise ShrinkflowError(f"timed out after {timeout:.0f} s waiting for {what}")


def stop(proc: subprocess.Popen) -> None:
    """Stop a process group by PID: SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@contextmanager
def _process(cmd: Sequence[str], env: Mapping[str, str], log: Path,
             cwd: Path | None = None) -> Iterator[subprocess.Popen]:
    with open(log, "w") as out:
        proc = subprocess.Popen(list(cmd), env=dict(env), cwd=cwd, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc
        finally:
            stop(proc)


def _ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:  # a 404 raises: "not yet"
        return response.status == 200


@contextmanager
def prefect_server(env: Mapping[str, str], log: Path) -> Iterator[str]:
    """``prefect server start`` on a free port of 127.0.0.1; yields its API URL once healthy.

    ``env`` should carry its own ``PREFECT_HOME`` (the server's SQLite lives there)."""
    port = free_port()
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
           "--port", str(port)]
    url = f"http://127.0.0.1:{port}/api"
    with _process(cmd, {**env, "PREFECT_API_URL": ""}, log) as proc:
        wait_until(lambda: _ok(f"{url}/health"), STARTUP_TIMEOUT_S, "the Prefect server", proc)
        yield url


@contextmanager
def serving(workspace: Path, url: str, deployment: str, env: Mapping[str, str], log: Path,
            args: Sequence[str] = ()) -> Iterator[subprocess.Popen]:
    """``shrinkflow serve`` for ``workspace`` against ``url``; yields once ``deployment``
    ("flow/deployment") is registered with the server."""
    cmd = [sys.executable, "-m", "shrinkflow.app.cli", "serve", *args, "--workspace", str(workspace)]
    name = urllib.parse.quote(deployment)
    with _process(cmd, {**env, "PREFECT_API_URL": url}, log, cwd=workspace) as proc:
        wait_until(lambda: _ok(f"{url}/deployments/name/{name}"), STARTUP_TIMEOUT_S,
                   "the served deployment", proc)
        yield proc
