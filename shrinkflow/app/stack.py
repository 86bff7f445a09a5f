"""A team's servers on one machine: ``shrinkflow stack up`` / ``status`` / ``down``.

Starts, on 127.0.0.1, the services a team shares, each as a process recorded by PID
(and its start time, so a recycled PID is never taken for ours) in
``.shrinkflow/stack/state.json``:

- PostgreSQL (``initdb``, ``pg_ctl``): databases ``mlflow`` and ``prefect`` owned by a
  role ``shrinkflow`` whose password is generated once; local connections only;
- an MLflow tracking server on it, serving artifacts (clients see ``mlflow-artifacts:``);
- a Prefect server on it, a ``process`` work pool and a worker polling it;
- a Dask scheduler and two single-threaded workers.

``up`` writes ``.shrinkflow/stack/stack.env`` (``source`` it) pointing ``shrinkflow``,
``mlflow`` and ``prefect`` at the stack, including ``SHRINKFLOW_REGISTRY_LOCK_DSN`` for
exact promotion (an advisory lock). Run again, ``up`` starts only what is not running, on
the same ports, so a client's environment stays valid. ``down`` stops everything by PID
(SIGTERM, then SIGKILL) and keeps the data; ``down --purge`` deletes it too.

PostgreSQL refuses to run as root: as root the server runs as the ``postgres`` user. Its
data directory is ``.shrinkflow/stack/postgres`` when that user can reach it; a workspace
behind a directory only root may enter (pytest's ``/tmp/pytest-of-root`` is mode 0700)
gets ``/var/tmp/shrinkflow-pg-<hash of the workspace path>`` instead, owned by
``postgres`` and mode 0700, recorded in the state file and removed by ``down --purge``.
Changing the permissions of the user's directories to let ``postgres`` in would be a
surprise; a directory of its own is not.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shrinkflow.core.env import TELEMETRY_OFF
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.files import write_text_atomic

POOL = "shrinkflow-process"
ROLE = "shrinkflow"
DASK_WORKERS = 2
STARTUP_TIMEOUT_S = 240
STOP_TIMEOUT_S = 20
# In start order; stopped in reverse.
# In a `dask worker`'s environment: its nanny sets MALLOC_TRIM_THRESHOLD_ (see
# flows/runner.LOCAL_CLUSTER), which fixes glibc's mmap threshold at 128 KiB; this puts
# it back at glibc's own ceiling, so activation tensors come from the heap, not from a
# fresh mapping each time (a training step: 514 ms with the nanny's setting alone, 344
# with this as well, 315 with neither; README, "Dask").
WORKER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "33554432"}

SERVICES = ("postgres", "mlflow", "prefect-server", "dask-scheduler",
            *(f"dask-worker-{i}" for i in range(1, DASK_WORKERS + 1)), "prefect-worker")
QUIET_DASK = {"DASK_LOGGING__DISTRIBUTED": "warning",
              "DASK_DISTRIBUTED__WORKER__DAEMON": "false",
              "DASK_DISTRIBUTED__ADMIN__TICK__LIMIT": "30s"}


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pid: int | None
    running: bool
    url: str
    log: str


class Stack:
    """The stack of one workspace: its state file, ports, credentials and processes."""

    def __init__(self, root: Path, echo: Callable[[str], None] = lambda _: None) -> None:
        self.root = Path(root).resolve()
        self.dir = self.root / ".shrinkflow" / "stack"
        self.logs = self.dir / "logs"
        self.state_file = self.dir / "state.json"
        self.env_file = self.dir / "stack.env"
        self.echo = echo
        self.state: dict[str, Any] = json.loads(self.state_file.read_text()) \
            if self.state_file.is_file() else {}

    # -- state -----------------------------------------------------------------------
    def _save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.state_file, json.dumps(self.state, indent=2) + "\n")
        os.chmod(self.state_file, 0o600)  # it holds the database password

    def _init_state(self) -> None:
        if self.state.get("ports"):
            return
        self.state = {
            "password": secrets.token_urlsafe(18),
            "ports": {"postgres": _free_port(), "mlflow": _free_port(),
                      "prefect-server": _free_port(), "dask-scheduler": _free_port()},
            "pg_root": str(_pg_root(self.dir / "postgres", self.root)),
            "services": {},
        }
        self._save()

    @property
    def port(self) -> dict[str, int]:
        return self.state["ports"]

    @property
    def pg_root(self) -> Path:
        return Path(self.state["pg_root"])

    def dsn(self, database: str, driver: str = "") -> str:
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return (f"{scheme}://{ROLE}:{self.state['password']}@127.0.0.1:"
                f"{self.port['postgres']}/{database}")

    def urls(self) -> dict[str, str]:
        return {"postgres": f"postgresql://127.0.0.1:{self.port['postgres']}",
                "mlflow": f"http://127.0.0.1:{self.port['mlflow']}",
                "prefect-server": f"http://127.0.0.1:{self.port['prefect-server']}/api",
                "dask-scheduler": f"tcp://127.0.0.1:{self.port['dask-scheduler']}"}

    def client_env(self) -> dict[str, str]:
        """What a client (``shrinkflow run``, ``mlflow``, ``prefect``, a worker) needs."""
        urls = self.urls()
        return {"MLFLOW_TRACKING_URI": urls["mlflow"],
                "PREFECT_API_URL": urls["prefect-server"],
                "SHRINKFLOW_DASK_ADDRESS": urls["dask-scheduler"],
                "SHRINKFLOW_REGISTRY_LOCK_DSN": self.dsn("mlflow"),
                **{k: v for k, v in TELEMETRY_OFF.items()
                   if k in ("PREFECT_SERVER_ANALYTICS_ENABLED", "MLFLOW_DISABLE_TELEMETRY",
                            "ORT_DISABLE_TELEMETRY", "DVC_NO_ANALYTICS", "DO_NOT_TRACK")}}

    # -- processes -------------------------------------------------------------------
    def pid(self, name: str) -> int | None:
        """The recorded PID of ``name`` if that process is still the one we started."""
        entry = self.state.get("services", {}).get(name)
        if not entry:
            return None
        return entry["pid"] if _same_process(entry["pid"], entry["started"]) else None

    def _record(self, name: str, pid: int) -> None:
        import psutil

        self.state.setdefault("services", {})[name] = {
            "pid": pid, "started": psutil.Process(pid).create_time()}
        self._save()

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "a") as out:
            out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
            out.flush()
            proc = subprocess.Popen(cmd, env=env, cwd=self.root, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self._record(name, proc.pid)
        return proc

    def _base_env(self) -> dict[str, str]:
        env = {**os.environ, **TELEMETRY_OFF, **QUIET_DASK}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "SHRINKFLOW_DASK_ADDRESS",
                    "SHRINKFLOW_REGISTRY_LOCK_DSN"):
            env.pop(key, None)
        return env

    # -- up ----------------------------------------------------------------------------
    def up(self) -> dict[str, str]:
        """Start every service that is not running; write the env file; return its vars."""
        for tool in ("initdb", "pg_ctl", "postgres"):
            if shutil.which(tool) is None:
                raise ShrinkflowError(f"stack up: {tool} is not on PATH; install PostgreSQL "
                                      "(Debian: apt-get install postgresql-15) and retry")
        self._init_state()
        for name in ("mlflow", "prefect-server", "dask-scheduler"):
            self._check_port(name)
        self._postgres()
        waits: list[Callable[[], None]] = []
        for name in ("mlflow", "prefect-server", "dask-scheduler"):
            waits.append(getattr(self, "_" + name.replace("-", "_"))())
        for wait in waits:
            wait()
        waits = [self._dask_worker(i) for i in range(1, DASK_WORKERS + 1)]
        waits.append(self._prefect_worker())
        for wait in waits:
            wait()
        env = self.client_env()
        lines = ["# Written by `shrinkflow stack up`: point shrinkflow, mlflow and prefect at "
                 "the stack.", f"#   source {self.env_file}"]
        lines += [f"export {k}={_quote(v)}" for k, v in env.items()]
        write_text_atomic(self.env_file, "\n".join(lines) + "\n")
        os.chmod(self.env_file, 0o600)
        return env

    def _check_port(self, name: str) -> None:
        deadline = time.time() + 10  # a process killed a moment ago may still hold it
        while self.pid(name) is None and not _port_free(self.port[name]) and \
                time.time() < deadline:
            time.sleep(0.5)
        if self.pid(name) is None and not _port_free(self.port[name]):
            raise ShrinkflowError(f"stack up: port {self.port[name]} of {name} is taken by "
                                  f"another process; stop it, or `shrinkflow stack down "
                                  f"--purge` for new ports")

    def _skip(self, name: str) -> bool:
        pid = self.pid(name)
        if pid is not None:
            self.echo(f"{name}: already running (pid {pid})")
        return pid is not None

    def _started(self, name: str, url: str = "") -> None:
        self.echo(f"{name}: started (pid {self.pid(name)}){' at ' + url if url else ''}")

    def _postgres(self) -> None:
        data = self.pg_root / "data"
        if not self._skip("postgres"):
            self._check_port("postgres")
            if not (data / "PG_VERSION").is_file():
                self._initdb(data)
            log = self.pg_root / "postgres.log"
            _pg_run(["pg_ctl", "-D", str(data), "-l", str(log), "-w", "-t", "120", "start"],
                    f"PostgreSQL did not start; see {log}")
            pid = int((data / "postmaster.pid").read_text().split()[0])
            self._record("postgres", pid)
            self._started("postgres", self.urls()["postgres"])
        self._databases()

    def _initdb(self, data: Path) -> None:
        pwfile = self.pg_root / "pwfile"
        pwfile.write_text(secrets.token_urlsafe(24) + "\n")  # the superuser's: never used
        _chown_pg(pwfile)
        os.chmod(pwfile, 0o600)
        try:
            _pg_run(["initdb", "-D", str(data), "-U", "postgres", f"--pwfile={pwfile}",
                     "--auth-host=scram-sha-256", "--auth-local=peer", "-E", "UTF8",
                     "--locale=C.UTF-8"], "initdb failed")
        finally:
            pwfile.unlink(missing_ok=True)
        # TCP on 127.0.0.1 only; no Unix socket (its default directory may not exist).
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(f"\n# shrinkflow stack\nlisten_addresses = '127.0.0.1'\n"
                       f"port = {self.port['postgres']}\nunix_socket_directories = ''\n")
        # The role the services use: password auth over TCP; created in single-user mode
        # so no superuser password ever has to be kept.
        sql = (f"CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD "
               f"'{self.state['password']}';\n")
        _pg_run(["postgres", "--single", "-D", str(data), "postgres"], "creating the role failed",
                input_=sql)

    def _databases(self) -> None:
        import psycopg

        deadline = time.time() + 60
        while True:
            try:
                conn = psycopg.connect(self.dsn("postgres"), autocommit=True, connect_timeout=5)
                break
            except psycopg.OperationalError as exc:
                if time.time() > deadline:
                    raise ShrinkflowError(f"PostgreSQL on port {self.port['postgres']}: "
                                          f"{str(exc).splitlines()[0]}") from None
                time.sleep(1)
        with conn:
            have = {r[0] for r in conn.execute("select datname from pg_database")}
            for db in ("mlflow", "prefect"):
                if db not in have:
                    conn.execute(f"CREATE DATABASE {db} OWNER {ROLE}")

    def _mlflow(self) -> Callable[[], None]:
        url = self.urls()["mlflow"]
        if self._skip("mlflow"):
            return lambda: None
        artifacts = self.dir / "artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        proc = self._spawn("mlflow", [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", self.dsn("mlflow", "psycopg"),
            "--serve-artifacts", "--artifacts-destination", str(artifacts),
            "--host", "127.0.0.1", "--port", str(self.port["mlflow"]), "--workers", "1"],
            self._base_env())
        return lambda: self._wait("mlflow", lambda: _http_ok(f"{url}/health"), proc, url)

    def _prefect_server(self) -> Callable[[], None]:
        url = self.urls()["prefect-server"]
        if self._skip("prefect-server"):
            return lambda: None
        env = {**self._base_env(), "PREFECT_HOME": str(self.dir / "prefect"),
               "PREFECT_API_DATABASE_CONNECTION_URL": self.dsn("prefect", "asyncpg"),
               "PREFECT_SERVER_API_HOST": "127.0.0.1"}
        proc = self._spawn("prefect-server", [
            sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
            "--port", str(self.port["prefect-server"])], env)
        return lambda: self._wait("prefect-server", lambda: _http_ok(f"{url}/health"), proc,
                                  url)

    def _dask_scheduler(self) -> Callable[[], None]:
        url = self.urls()["dask-scheduler"]
        if self._skip("dask-scheduler"):
            return lambda: None
        proc = self._spawn("dask-scheduler", [
            _dask(), "scheduler", "--host", "127.0.0.1", "--port",
            str(self.port["dask-scheduler"]), "--dashboard-address", f"127.0.0.1:{_free_port()}"],
            self._base_env())
        return lambda: self._wait("dask-scheduler",
                                  lambda: not _port_free(self.port["dask-scheduler"]), proc, url)

    def _worker_env(self) -> dict[str, str]:
        return {**self._base_env(), **self.client_env(), **WORKER_MALLOC,
                "PREFECT_HOME": str(self.dir / "prefect-client")}

    def _dask_worker(self, i: int) -> Callable[[], None]:
        name = f"dask-worker-{i}"
        if self._skip(name):
            return lambda: None
        proc = self._spawn(name, [
            _dask(), "worker", self.urls()["dask-scheduler"], "--nworkers", "1", "--nthreads", "1",
            "--preload", "shrinkflow.tasks.worker", "--host", "127.0.0.1",
            "--dashboard-address", f"127.0.0.1:{_free_port()}", "--name", f"{name}"],
            self._worker_env())
        return lambda: self._wait(name, lambda: self._dask_has(name), proc)

    def _dask_has(self, worker: str) -> bool:
        from distributed import Client

        with Client(self.urls()["dask-scheduler"], timeout=10) as client:
            return any(w.get("name") == worker
                       for w in client.scheduler_info(n_workers=-1)["workers"].values())

    def _prefect_worker(self) -> Callable[[], None]:
        name = "prefect-worker"
        if self._skip(name):
            return lambda: None
        api = self.urls()["prefect-server"]
        worker_name = f"shrinkflow-{socket.gethostname()}-{self.port['prefect-server']}"
        # A triggered run is picked up within 2 s, not at the worker's default 10 s poll.
        env = {"PREFECT_WORKER_QUERY_SECONDS": "2", **self._worker_env()}
        proc = self._spawn(name, [
            sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--type",
            "process", "--name", worker_name, "--create-pool-if-not-found"], env)

        def polling() -> bool:
            req = urllib.request.Request(f"{api}/work_pools/{POOL}/workers/filter", data=b"{}",
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=5) as response:
                return any(w["name"] == worker_name for w in json.load(response))

        return lambda: self._wait(name, polling, proc, f"pool {POOL}")

    def _wait(self, name: str, ready: Callable[[], bool], proc: subprocess.Popen,
              url: str = "") -> None:
        deadline = time.time() + STARTUP_TIMEOUT_S
        while time.time() < deadline:
            if proc.poll() is not None:
                raise ShrinkflowError(f"stack up: {name} exited with {proc.returncode}; see "
                                      f"{self.logs / (name + '.log')}")
            with contextlib.suppress(Exception):
                if ready():
                    self._started(name, url)
                    return
            time.sleep(1)
        raise ShrinkflowError(f"stack up: {name} not ready after {STARTUP_TIMEOUT_S} s; see "
                              f"{self.logs / (name + '.log')}")

    # -- status, down -------------------------------------------------------------------
    def status(self) -> list[ServiceStatus]:
        urls = self.urls() if self.state.get("ports") else {}
        out = []
        for name in SERVICES:
            pid = self.pid(name)
            log = str(self.pg_root / "postgres.log") if name == "postgres" and self.state \
                else str(self.logs / f"{name}.log")
            url = urls.get(name, f"pool {POOL}" if name == "prefect-worker" else "")
            out.append(ServiceStatus(name, pid, pid is not None, url, log))
        return out

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to a service's process group (tests: a server crash)."""
        pid = self.pid(name)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)

    def down(self, purge: bool = False) -> list[str]:
        """Stop every service by PID; with ``purge`` delete the data too. Idempotent."""
        stopped = []
        for name in reversed(SERVICES):
            pid = self.pid(name)
            if pid is not None:
                if name == "postgres":
                    with contextlib.suppress(ShrinkflowError):
                        _pg_run(["pg_ctl", "-D", str(self.pg_root / "data"), "-m", "fast", "-w",
                                 "-t", str(STOP_TIMEOUT_S), "stop"], "pg_ctl stop failed")
                _terminate(pid, group=name != "postgres")
                stopped.append(name)
                self.echo(f"{name}: stopped (pid {pid})")
            self.state.get("services", {}).pop(name, None)
        if self.state:
            self._save()
        if purge:
            if self.state.get("pg_root"):
                shutil.rmtree(self.pg_root, ignore_errors=True)
            shutil.rmtree(self.dir, ignore_errors=True)
            self.state = {}
        return stopped


# -- helpers ---------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    """Whether a server could listen on ``port`` (as servers do, with SO_REUSEADDR: the
    connections of a crashed server linger in TIME_WAIT but do not block a restart)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=3) as response:
        return response.status == 200


def _quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def _dask() -> str:
    return str(Path(sys.executable).parent / "dask")


def _same_process(pid: int, started: float) -> bool:
    import psutil

    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - started) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _terminate(pid: int, group: bool) -> None:
    """SIGTERM (the process group when ``group``), then SIGKILL after a grace period."""
    import psutil

    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    try:
        proc = psutil.Process(pid)
    except psutil.Error:
        return
    send(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except psutil.TimeoutExpired:
        send(signal.SIGKILL)
        with contextlib.suppress(psutil.Error):
            proc.wait(timeout=10)
    except psutil.Error:
        pass
    if group:  # children that outlived their leader (a flow run, a uvicorn worker)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def _as_root() -> bool:
    return os.geteuid() == 0


def _pg_run(cmd: list[str], what: str, input_: str | None = None) -> None:
    """Run a PostgreSQL tool; as root, as the ``postgres`` user (the server refuses root)."""
    if _as_root():
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    done = subprocess.run(cmd, cwd="/", input=input_, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
        raise ShrinkflowError(f"{what}: {tail[0]}")


def _chown_pg(path: Path) -> None:
    if _as_root():
        shutil.chown(path, "postgres", "postgres")


def _pg_root(preferred: Path, workspace: Path) -> Path:
    """The directory for PostgreSQL's data: ``preferred`` (under the workspace) when the
    user that runs the server can reach it, else one of its own under /var/tmp."""
    preferred.mkdir(parents=True, exist_ok=True)
    if not _as_root():
        return preferred
    _chown_pg(preferred)
    os.chmod(preferred, 0o700)
    reach = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-w", str(preferred)],
                           cwd="/", capture_output=True)
    if reach.returncode == 0:
        return preferred
    preferred.rmdir()
    tag = hashlib.sha256(str(workspace).encode()).hexdigest()[:12]
    fallback = Path("/var/tmp") / f"shrinkflow-pg-{tag}"
    fallback.mkdir(mode=0o700, exist_ok=True)
    _chown_pg(fallback)
    os.chmod(fallback, 0o700)
    return fallback
