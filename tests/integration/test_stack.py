"""The team stack for real: `shrinkflow stack up` (PostgreSQL, MLflow serving artifacts,
a Prefect server with a process worker, a Dask scheduler and two workers), a deployment
from prefect.yaml that clones the deployed commit and pulls the data, runs triggered
through the Prefect API, an MLflow server killed in the middle of a run, exact promotion
under PostgreSQL's advisory lock."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, _git, fast_overrides, make_workspace, venv_env, write_params

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("initdb") is None,
                       reason="PostgreSQL's initdb is not on PATH (Debian: postgresql-15)"),
]

VARIANTS = ("variants={"
            "pr: {from: teacher, steps: [{prune: {amount: 0.5}}, {finetune: {fit: {epochs: 1}}}]}}")
DEPLOYMENT = "shrinkflow-retrain/nightly"
MODEL = "shrinkflow-digits"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from shrinkflow.app.stack import Stack

    root = tmp_path_factory.mktemp("stack")
    lines: list[str] = []
    s = Stack(root, echo=lines.append)
    start = time.perf_counter()
    try:
        env = s.up()
        print(f"\nstack up: {time.perf_counter() - start:.1f} s")
        yield s, env
    finally:
        s.down(purge=True)
        assert not any(r.running for r in s.status())


def _sh(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _api(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as response:
        return json.load(response)


def _trigger(api: str) -> str:
    """Create a flow run of the deployment through the Prefect REST API."""
    dep = _api(f"{api}/deployments/name/{DEPLOYMENT}")
    return _api(f"{api}/deployments/{dep['id']}/create_flow_run", {})["id"]


def _wait(api: str, run_id: str, timeout: float = 900) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        run = _api(f"{api}/flow_runs/{run_id}")
        if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(2)
    raise AssertionError(f"flow run {run_id} not finished after {timeout} s")


def _deploy(ws: Path, env: dict[str, str]) -> None:
    _git(ws, "add", "-A")
    _git(ws, "commit", "-qm", "deploy", "--allow-empty")
    _git(ws, "push", "-q", "origin", "HEAD")
    _sh([str(Path(sys.executable).parent / "prefect"), "--no-prompt", "deploy", "--name",
         "nightly"], ws, env)


def _pipeline_runs(c) -> list:
    exp = c.get_experiment_by_name("shrinkflow")
    return c.search_runs([exp.experiment_id], "tags.`shrinkflow.step` = 'pipeline'")


def test_two_promotions_racing_from_two_processes_give_one_winner(stack, tmp_path):
    """Both read champion v1, both try to move it (compare-and-set) at the same instant:
    under the advisory lock exactly one finds v1 still there."""
    from mlflow import MlflowClient

    s, env = stack
    c = MlflowClient(env["MLFLOW_TRACKING_URI"])
    c.create_registered_model("race")
    exp = c.create_experiment("race")
    run = c.create_run(exp)
    for _ in range(3):
        c.create_model_version("race", source=f"{run.info.artifact_uri}/m", run_id=run.info.run_id)
    c.set_registered_model_alias("race", "champion", "1")
    script = textwrap.dedent("""
        import sys, time
        from shrinkflow.ops.registry import promotion_lock
        from shrinkflow.ops.tracking import client
        uri, mine, at = sys.argv[1], sys.argv[2], float(sys.argv[3])
        c = client(uri)
        expected = c.get_model_version_by_alias("race", "champion").version
        time.sleep(max(0.0, at - time.time()))
        with promotion_lock(uri, "race"):
            current = c.get_model_version_by_alias("race", "champion").version
            time.sleep(1.0)  # a promotion's measurement: the window a race needs
            if current == expected:
                c.set_registered_model_alias("race", "champion", mine)
                print("won")
            else:
                print("lost")
    """)
    penv = {**venv_env(), **env}
    at = time.time() + 8  # both processes are up and waiting by then
    procs = [subprocess.Popen([sys.executable, "-c", script, env["MLFLOW_TRACKING_URI"], v,
                               str(at)], env=penv, stdout=subprocess.PIPE, text=True)
             for v in ("2", "3")]
    outs = [p.communicate(timeout=120)[0].strip().splitlines()[-1] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(outs) == ["lost", "won"]
    winner = "2" if outs[0] == "won" else "3"
    assert c.get_model_version_by_alias("race", "champion").version == winner


def test_deployment_on_the_stack_survives_an_mlflow_crash(stack, tmp_path):
    from mlflow import MlflowClient

    s, env = stack
    start = time.perf_counter()
    api, uri = env["PREFECT_API_URL"], env["MLFLOW_TRACKING_URI"]
    c = MlflowClient(uri)

    # A repository as a team has it: code, params, prefect.yaml, an `origin`, a DVC remote
    # in the committed config.
    ws = make_workspace(tmp_path / "ws", tmp_path / "remote")
    write_params(ws, fast_overrides(epochs=2, variants=VARIANTS))
    shutil.copy2(REPO / "prefect.yaml", ws / "prefect.yaml")
    penv = {**venv_env(), **env}
    dvc = [sys.executable, "-m", "dvc"]
    _sh([*dvc, "remote", "remove", "--local", "test"], ws, penv)
    _sh([*dvc, "remote", "add", "-d", "team", str(tmp_path / "remote")], ws, penv)
    subprocess.run(["git", "init", "-q", "--bare", str(tmp_path / "origin.git")], check=True)
    _git(ws, "remote", "add", "origin", str(tmp_path / "origin.git"))
    _deploy(ws, penv)

    # 1. A run triggered through the API: every variant's run and the champion on the server.
    t = time.perf_counter()
    run = _wait(api, _trigger(api))
    assert run["state"]["type"] == "COMPLETED", run["state"]
    print(f"\nfirst run: {time.perf_counter() - t:.1f} s")
    (first,) = _pipeline_runs(c)
    assert first.info.status == "FINISHED"
    children = c.search_runs([first.info.experiment_id],
                             f"tags.mlflow.parentRunId = '{first.info.run_id}'")
    assert {"teacher", "pr"} <= {r.info.run_name for r in children}
    assert all(r.info.artifact_uri.startswith("mlflow-artifacts:") for r in [first, *children])
    champion = c.get_model_version_by_alias(MODEL, "champion")
    # the artifacts are on the server's store, not in the worker's clone
    assert any((Path(s.dir) / "artifacts").rglob("model.onnx"))
    out = _sh([str(Path(sys.executable).parent / "shrinkflow"), "audit",
               f"models:/{MODEL}@champion", "--verify"], ws, penv)
    assert "FAIL" not in out

    # 2. Kill the MLflow server in the middle of the next run: the run fails, saying so.
    write_params(ws, [*fast_overrides(epochs=2, variants=VARIANTS), "train.seed=7"])
    _deploy(ws, penv)
    crashed_id = _trigger(api)
    deadline = time.time() + 600
    while not [r for r in _pipeline_runs(c) if r.info.status == "RUNNING"]:
        assert time.time() < deadline, "the second run never started its MLflow run"
        time.sleep(0.5)
    time.sleep(2)
    s.kill("mlflow")
    crashed = _wait(api, crashed_id)
    assert crashed["state"]["type"] in ("FAILED", "CRASHED")
    message = crashed["state"]["message"] or ""
    assert "cannot reach MLflow" in message and uri in message, message

    # 3. `stack up` again restarts only what is missing; a re-trigger completes.
    lines: list[str] = []
    s.echo = lines.append
    s.up()
    assert [ln for ln in lines if "started" in ln] == [ln for ln in lines if ln.startswith("mlflow")]
    again = _wait(api, _trigger(api))
    assert again["state"]["type"] == "COMPLETED", again["state"]

    # Nothing lost, nothing duplicated.
    runs = _pipeline_runs(c)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert len(finished) == 2 and first.info.run_id in {r.info.run_id for r in finished}
    # the run the crash interrupted is ended by the next one, saying why
    (interrupted,) = [r for r in runs if r.info.status != "FINISHED"]
    assert interrupted.info.status == "FAILED"
    assert crashed_id in interrupted.data.tags["shrinkflow.error"]
    latest = max(finished, key=lambda r: r.info.start_time)
    children = c.search_runs([first.info.experiment_id],
                             f"tags.mlflow.parentRunId = '{latest.info.run_id}'")
    assert {"teacher", "pr"} <= {r.info.run_name for r in children}
    versions = c.search_model_versions(f"name='{MODEL}'")
    shas = [v.tags.get("shrinkflow.artifact_sha256") or v.tags.get("shrinkflow.onnx_sha256")
            for v in versions]
    assert len(shas) == len(set(shas)), "a registered version was duplicated"
    assert c.get_model_version(MODEL, champion.version).status == "READY"
    for v in versions:  # every version's model is still downloadable from the server
        assert c.get_model_version_download_uri(MODEL, v.version)
    out = _sh([str(Path(sys.executable).parent / "shrinkflow"), "audit",
               f"models:/{MODEL}@champion", "--verify"], ws, penv)
    assert "FAIL" not in out
    print(f"deploy, run, crash, restart, re-run: {time.perf_counter() - start:.1f} s")
