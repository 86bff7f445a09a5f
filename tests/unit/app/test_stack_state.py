"""The stack's bookkeeping without starting anything: state, env file, PIDs, idempotent down."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from shrinkflow.app import stack as st


def test_status_and_down_of_a_workspace_without_a_stack(tmp_path):
    s = st.Stack(tmp_path)
    assert [r.name for r in s.status()] == list(st.SERVICES)
    assert not any(r.running for r in s.status())
    assert s.down() == [] and s.down(purge=True) == []


def test_a_recycled_pid_is_not_taken_for_a_service(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                            start_new_session=True)
    try:
        s = st.Stack(tmp_path)
        s.state = {"ports": {"postgres": 1, "mlflow": 2, "prefect-server": 3,
                             "dask-scheduler": 4}, "password": "x", "pg_root": str(tmp_path),
                   "services": {}}
        s._record("mlflow", proc.pid)
        assert s.pid("mlflow") == proc.pid
        state = json.loads((tmp_path / ".shrinkflow/stack/state.json").read_text())
        state["services"]["mlflow"]["started"] -= 100  # another process with that PID
        s.state = state
        assert s.pid("mlflow") is None
        assert oct(os.stat(s.state_file).st_mode & 0o777) == "0o600"
        s.state = json.loads(s.state_file.read_text())
        assert s.down() == ["mlflow"] and proc.wait(timeout=30) is not None
    finally:
        if proc.poll() is None:
            proc.kill()


def test_client_env_points_everything_at_the_stack(tmp_path):
    s = st.Stack(tmp_path)
    s.state = {"ports": {"postgres": 5433, "mlflow": 5001, "prefect-server": 4201,
                         "dask-scheduler": 8787}, "password": "p'w", "pg_root": str(tmp_path)}
    env = s.client_env()
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5001"
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:4201/api"
    assert env["SHRINKFLOW_DASK_ADDRESS"] == "tcp://127.0.0.1:8787"
    assert env["SHRINKFLOW_REGISTRY_LOCK_DSN"] == "postgresql://shrinkflow:p'w@127.0.0.1:5433/mlflow"
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert s.dsn("prefect", "asyncpg").startswith("postgresql+asyncpg://")
    line = "export X=" + st._quote("p'w") + "\n"
    out = subprocess.run(["sh", "-c", '. /dev/stdin; printf %s "$X"'], input=line,
                         capture_output=True, text=True)
    assert out.stdout == "p'w"
