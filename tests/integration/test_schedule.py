"""The scheduled flow against a real Prefect server on 127.0.0.1: served with
`shrinkflow serve`, triggered through the API instead of waiting for cron."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import fast_overrides, make_workspace, venv_env, write_params

pytestmark = pytest.mark.slow
DEPLOYMENT = "shrinkflow-retrain/nightly"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited with {proc.returncode}")
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def _stop(proc: subprocess.Popen) -> None:
    """Stop a process group by PID: SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture
def prefect_server(tmp_path, monkeypatch):
    port = _free_port()
    env = {**venv_env(), "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_API_URL": ""}
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 (closed in finally)
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host",
                             "127.0.0.1", "--port", str(port)], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        _wait(lambda: urllib.request.urlopen(f"{url}/health", timeout=2).status == 200, 180,
              "the Prefect server", proc)
        monkeypatch.setenv("PREFECT_API_URL", url)
        monkeypatch.setenv("PREFECT_HOME", env["PREFECT_HOME"])
        yield url, env
    finally:
        _stop(proc)
        log.close()


def _trigger(url: str):
    """Run the deployment now, wait for it, return (final state, its RetrainResult)."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url}):
        flow_run = run_deployment(DEPLOYMENT, timeout=900)
        assert flow_run.state.is_completed(), flow_run.state
        return flow_run, flow_run.state.result()


def test_serve_then_skip_then_recalibrate_only(prefect_server, tmp_path):
    url, env = prefect_server
    ws = make_workspace(tmp_path / "ws", tmp_path / "remote")
    write_params(ws, fast_overrides())
    serve_log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 (closed in finally)
    serve = subprocess.Popen(
        [sys.executable, "-m", "shrinkflow.cli", "serve", "--cron", "0 3 * * *",
         "--workspace", str(ws)], env={**env, "PREFECT_API_URL": url}, cwd=ws,
        stdout=serve_log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        def deployed() -> bool:
            with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as c:
                return c.read_deployment_by_name(DEPLOYMENT) is not None

        _wait(deployed, 180, "the served deployment", serve)

        # 1. First run: everything computed, the selected model becomes champion.
        _, first = _trigger(url)
        assert first.status == "ran" and "train" in first.computed
        assert first.promotion["promoted"]

        # 2. Nothing changed: skipped, nothing trained, no new MLflow run.
        _, second = _trigger(url)
        assert second.status == "skipped" and "nothing changed" in second.reason
        assert second.computed == [] and second.run_id is None

        # 3. Only a quantization param changes: re-calibrate; the teacher is not retrained.
        overrides = fast_overrides()
        overrides[-1] = overrides[-1].replace("calibration_size: 64",
                                              "calibration_size: 64, calibrator: percentile")
        write_params(ws, overrides)
        _, third = _trigger(url)
        assert third.status == "ran" and third.changed == ["params.variants.pr_q8"]
        assert "pr_q8:convert" in third.computed
        assert not any(step in third.computed for step in ("prepare", "train", "pr:prune",
                                                           "pr:finetune"))
        assert "train" in third.reused
    finally:
        _stop(serve)
        serve_log.close()
        print((tmp_path / "serve.log").read_text()[-3000:])
