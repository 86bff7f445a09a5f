"""Scale-out for real: a Dask scheduler and two worker processes on 127.0.0.1 run the
pipeline's steps; every result is bit-identical to a local run; a worker killed in the
middle of a step loses nothing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from shrinkflow.app.stack import WORKER_MALLOC
from shrinkflow.plan.params import load_params
from tests.conftest import fast_overrides, make_workspace, venv_env, write_params

pytestmark = pytest.mark.slow

VARIANTS = ("variants={"
            "pa: {from: teacher, steps: [{prune: {amount: 0.5}}, {finetune: {fit: {epochs: 1}}}]},"
            "pb: {from: teacher, steps: [{prune: {amount: 0.6}}, {finetune: {fit: {epochs: 1}}}]},"
            "pc: {from: teacher, steps: [{prune: {amount: 0.7}}, {finetune: {fit: {epochs: 1}}}]},"
            "pa_q8: {from: pa, steps: [{quantize: {method: static, calibration_size: 64}}]}}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(prefect_harness, tmp_path_factory):
    """`dask scheduler` + two `dask worker` processes, stopped by PID."""
    from prefect.settings import PREFECT_API_URL

    log = tmp_path_factory.mktemp("dask")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**venv_env(), "PREFECT_API_URL": PREFECT_API_URL.value(),
           "DASK_LOGGING__DISTRIBUTED": "warning",
           # What README asks of a user's cluster (flows/runner.LOCAL_CLUSTER).
           "DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION": "inf",
           "DASK_DISTRIBUTED__SCHEDULER__WORK_STEALING_INTERVAL": "100ms", **WORKER_MALLOC}
    procs = []

    def start(*args: str, name: str) -> subprocess.Popen:
        out = open(log / f"{name}.log", "w")  # noqa: SIM115
        p = subprocess.Popen([str(Path(sys.executable).parent / "dask"), *args], env=env,
                             stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(p)
        return p

    try:
        start("scheduler", "--host", "127.0.0.1", "--port", str(port),
              "--dashboard-address", f"127.0.0.1:{_free_port()}", name="scheduler")
        for i in range(2):
            start("worker", address, "--nworkers", "1", "--nthreads", "1",
                  "--preload", "shrinkflow.tasks.worker",
                  "--host", "127.0.0.1", "--dashboard-address", f"127.0.0.1:{_free_port()}",
                  "--name", f"w{i}", name=f"worker{i}")
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)


def _workspace(root: Path) -> Path:
    ws = make_workspace(root / "ws", root / "remote")
    write_params(ws, fast_overrides(epochs=2, variants=VARIANTS))
    return ws


def _shas(ws: Path) -> dict[str, str]:
    from shrinkflow.core.files import file_sha256

    return {p.name: file_sha256(p) for p in sorted((ws / "onnx").glob("*.onnx"))}


@pytest.fixture(scope="module")
def local_shas(prefect_harness, tmp_path_factory) -> dict[str, str]:
    """The ONNX files a run on a LocalCluster makes."""
    from shrinkflow.flows.pipeline import run_pipeline

    local = _workspace(tmp_path_factory.mktemp("local"))
    run_pipeline(load_params(local / "params.yaml"), local)
    return _shas(local)


def test_steps_run_on_both_workers_and_match_a_local_run(cluster, local_shas, tmp_path):
    from shrinkflow.flows.pipeline import run_pipeline

    from shrinkflow.ops.tracking import client as mlflow_client

    ws = _workspace(tmp_path / "cluster")
    result = run_pipeline(load_params(ws / "params.yaml"), ws, dask_address=cluster)
    c = mlflow_client(f"sqlite:///{ws / 'mlflow.db'}")
    tagged = set()  # the workers of each model's chain, as its MLflow run names them
    for _name, info in result.models.items():
        tags = c.get_run(info["run_id"]).data.tags
        tagged |= set(filter(None, tags["shrinkflow.workers"].split(",")))
    # Every step (chains, conversions, validations, latency) names its worker in its record.
    from shrinkflow.plan.executor import resolve_cached
    from shrinkflow.plan.plan import build_plan
    from shrinkflow.plan.store import Store

    plan = build_plan(load_params(ws / "params.yaml"), ws)
    records = resolve_cached(plan, Store(ws / ".shrinkflow" / "store"), plan.steps)
    workers = {r.worker for r in records.values()}
    assert len(workers) == 2 and all(w.startswith("tcp://127.0.0.1:") for w in workers)
    assert tagged <= workers

    assert _shas(ws) == local_shas and len(local_shas) == 5


def test_a_worker_killed_mid_step_loses_nothing(cluster, local_shas, tmp_path):
    from shrinkflow.flows.pipeline import run_pipeline

    ws = _workspace(tmp_path / "kill")
    scratch = ws / ".shrinkflow" / "store" / "tmp"
    killed: list[int] = []

    def killer() -> None:
        """kill -9 the worker process that is computing a step (its pid is in the
        scratch directory's name)."""
        deadline = time.time() + 600
        while time.time() < deadline and not killed:
            for d in scratch.glob("*") if scratch.is_dir() else []:
                pid = int(d.name.split("-")[1])
                if pid != os.getpid():
                    time.sleep(1.0)  # well inside the step
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.1)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    result = run_pipeline(load_params(ws / "params.yaml"), ws, dask_address=cluster)
    t.join(timeout=5)
    assert killed, "no step was caught running"
    assert result.promotion["promoted"]
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    exp = c.get_experiment_by_name("shrinkflow")
    assert {r.info.status for r in c.search_runs([exp.experiment_id])} == {"FINISHED"}
    versions = c.search_model_versions("name='shrinkflow-digits'")
    assert len(versions) == 1
    assert not any(p.name.startswith(".") for p in (ws / "onnx").iterdir())
    assert _shas(ws) == local_shas  # the retried step made the same bytes
