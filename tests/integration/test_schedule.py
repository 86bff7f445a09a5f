"""The scheduled flow against a real Prefect server on 127.0.0.1: served with
`shrinkflow serve`, triggered through the API instead of waiting for cron."""

from __future__ import annotations

import pytest

from shrinkflow.app.localserver import prefect_server as local_prefect_server
from shrinkflow.app.localserver import serving
from tests.conftest import fast_overrides, make_workspace, venv_env, write_params

pytestmark = pytest.mark.slow
DEPLOYMENT = "shrinkflow-retrain/nightly"


@pytest.fixture
def prefect_server(tmp_path, monkeypatch):
    env = {**venv_env(), "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    with local_prefect_server(env, tmp_path / "server.log") as url:
        monkeypatch.setenv("PREFECT_API_URL", url)
        monkeypatch.setenv("PREFECT_HOME", env["PREFECT_HOME"])
        yield url, env


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
    try:
        with serving(ws, url, DEPLOYMENT, env, tmp_path / "serve.log", ["--cron", "0 3 * * *"]):
            # 1. First run: everything computed, the selected model becomes champion.
            _, first = _trigger(url)
            assert first.status == "ran" and "teacher:train" in first.computed
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
            assert "pr_q8:quantize" in third.computed
            assert not any(step in third.computed for step in ("prepare", "teacher:train",
                                                               "pr:prune", "pr:finetune"))
            assert "teacher:train" in third.reused
    finally:
        print((tmp_path / "serve.log").read_text()[-3000:])
