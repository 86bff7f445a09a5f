"""The temporary Prefect API a run starts when none is configured (``make run`` on a
fresh machine): it comes up in the background, serves a flow run, and is gone after."""

import os
import subprocess
import sys
import urllib.request

import pytest

pytestmark = pytest.mark.slow

FLOW = """
from prefect import flow, task

@task
def add(a, b):
    return a + b

@flow
def tiny():
    return add.submit(1, 2).result()

assert tiny() == 3
print("flow ok")
"""


def test_temporary_api_serves_a_flow_and_stops(tmp_path, monkeypatch):
    from shrinkflow.flows import runner

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    api = runner.TemporaryApi()
    try:
        url = api.wait(180)
        with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
            assert r.status == 200
        out = subprocess.run([sys.executable, "-c", FLOW], capture_output=True, text=True,
                             timeout=300, env={**os.environ, "PREFECT_API_URL": url})
        assert out.returncode == 0 and "flow ok" in out.stdout, out.stderr[-2000:]
        proc = api.proc
    finally:
        api.stop()
    assert proc.poll() is not None and api.proc is None


def test_prefect_api_uses_a_prestarted_server(tmp_path, monkeypatch):
    from shrinkflow.flows import runner

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    started = runner.TemporaryApi()
    with runner.prefect_api(started) as url:
        assert url == started.url and os.environ["PREFECT_API_URL"] == url
    assert "PREFECT_API_URL" not in os.environ and started.proc is None
