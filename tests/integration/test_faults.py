"""The fault suite: what a careful user of MLflow and DVC expects when things go wrong.
Each test asserts the one-line message, the exit code, and the state afterwards: no
half file, no RUNNING run, no duplicate version, `dvc status` clean, `audit --verify`
passing."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import fast_overrides, make_workspace, venv_env, write_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api(prefect_harness):
    """The harness's Prefect API, for command-line runs in subprocesses."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def cli(ws: Path, *args: str, api: str, wait: bool = True, env: dict | None = None):
    cmd = [sys.executable, "-m", "shrinkflow.app.cli", *args, "--workspace", str(ws)]
    environment = {**venv_env(), "PREFECT_API_URL": api, **(env or {})}
    if not wait:  # output to files: a pipe nobody reads fills up and blocks the run
        logs = [ws.parent / f"{ws.name}-{time.time_ns()}.{s}" for s in ("out", "err")]
        with open(logs[0], "w") as out, open(logs[1], "w") as err:
            proc = subprocess.Popen(cmd, cwd=ws, env=environment, stdout=out, stderr=err,
                                    text=True, start_new_session=True)
        proc.logs = logs  # type: ignore[attr-defined]
        return proc
    return subprocess.run(cmd, cwd=ws, env=environment, capture_output=True, text=True,
                          timeout=900)


def output(proc: subprocess.Popen) -> tuple[str, str]:
    """What a background run printed so far: (stdout, stderr)."""
    return tuple(p.read_text() for p in proc.logs)  # type: ignore[attr-defined]


def mlflow_client(ws: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")


def run_statuses(ws: Path) -> list[str]:
    c = mlflow_client(ws)
    exp = c.get_experiment_by_name("shrinkflow")
    return [r.info.status for r in c.search_runs([exp.experiment_id])] if exp else []


def assert_consistent(ws: Path, api: str) -> None:
    """No RUNNING run, no duplicate version, DVC clean, audit --verify passing, no half
    files anywhere in the published outputs."""
    assert "RUNNING" not in run_statuses(ws)
    c = mlflow_client(ws)
    shas = [mv.tags.get("shrinkflow.artifact_sha256") or mv.tags.get("shrinkflow.onnx_sha256")
            for mv in c.search_model_versions("name='shrinkflow-digits'")]
    assert len(shas) == len(set(shas)), shas
    status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=ws, capture_output=True,
                            text=True, env=venv_env(), timeout=300)
    assert "up to date" in status.stdout, status.stdout + status.stderr
    out = cli(ws, "audit", "models:/shrinkflow-digits@champion", "--verify", api=api)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    for d in ("models", "onnx", "data", "metrics"):
        assert not list((ws / d).rglob(".*.tmp-*")), d


@pytest.fixture
def ws(tmp_path):
    root = make_workspace(tmp_path / "ws", tmp_path / "remote")
    write_params(root, fast_overrides(epochs=2))
    subprocess.run(["git", "-c", "user.email=t@e", "-c", "user.name=t", "commit", "-qam",
                    "params"], cwd=root, check=True)
    return root


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    """Poll ``predicate``; when ``proc`` (the run being watched) ends first, fail with
    its output instead of waiting out the timeout."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            out, err = output(proc)
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}:\n"
                                 f"{out[-2000:]}\n{err[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def stored(ws: Path) -> int:
    return len(list((ws / ".shrinkflow" / "store").glob("*/*/record.json")))


@pytest.mark.parametrize("where", ["mid-step", "step-boundary"])
def test_kill_9_then_rerun_completes_with_nothing_lost(ws, api, where):
    proc = cli(ws, "run", api=api, wait=False)
    if where == "mid-step":  # the teacher is training: a scratch directory exists
        wait_for(lambda: stored(ws) >= 1 and any((ws / ".shrinkflow" / "store" / "tmp").glob("*")),
                 300, "a step in progress", proc)
    else:  # right after the teacher's result is committed
        wait_for(lambda: stored(ws) >= 2, 300, "two committed steps", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    before = stored(ws)
    out = cli(ws, "run", api=api)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    if "RUNNING" in " ".join(run_statuses(ws)):  # the killed run, if it had started one
        pytest.fail("a RUNNING run was left behind")
    assert stored(ws) > before  # the rest was computed; what was committed was kept
    assert_consistent(ws, api)


def test_sigterm_ends_the_run_cleanly(ws, api):
    """A scheduler or container stop sends SIGTERM: the run ends like Ctrl-C, with one
    line, exit 143, its MLflow run FAILED and none of its processes left behind."""
    proc = cli(ws, "run", api=api, wait=False)
    wait_for(lambda: stored(ws) >= 1 and any((ws / ".shrinkflow" / "store" / "tmp").glob("*")),
             300, "a step in progress", proc)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    err = output(proc)[1]
    assert proc.returncode == 143, err[-3000:]
    assert "terminated" in err and "Traceback" not in err, err[-3000:]
    assert "FAILED" in run_statuses(ws) and "RUNNING" not in run_statuses(ws)
    # its Dask workers and their nanny are gone too (they share its process group)
    wait_for(lambda: not _group_alive(proc.pid), 30, "the run's processes to end")
    out = cli(ws, "run", api=api)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert_consistent(ws, api)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_runs_at_once_the_second_is_refused(ws, api):
    from shrinkflow.ops.locks import workspace_lock

    with workspace_lock(ws / ".shrinkflow", "another shrinkflow run"):
        out = cli(ws, "run", api=api)
    assert out.returncode == 1 and "is busy" in out.stderr and "Traceback" not in out.stderr
    assert "another shrinkflow run" in out.stderr


def test_a_stale_file_is_never_published_and_a_moved_workspace_keeps_working(ws, api, tmp_path):
    first = cli(ws, "run", api=api)
    assert first.returncode == 0, first.stderr[-3000:]
    teacher = (ws / "models" / "teacher.pt").read_bytes()
    # Another configuration overwrites the published teacher (not recorded in DVC) ...
    other = cli(ws, "run", "--set", "train.epochs=1", api=api)
    assert other.returncode == 0, other.stderr[-3000:]
    assert (ws / "models" / "teacher.pt").read_bytes() != teacher
    # ... and the next run with params.yaml publishes the right one again, from the store.
    third = cli(ws, "run", api=api)
    assert third.returncode == 0, third.stderr[-3000:]
    assert (ws / "models" / "teacher.pt").read_bytes() == teacher
    assert "teacher:train" not in third.stdout.split("computed:")[-1].split("\n")[0]
    # A file replaced by hand is noticed too.
    shutil.copyfile(ws / "models" / "pr.pt", ws / "models" / "teacher.pt")
    again = cli(ws, "run", api=api)
    assert again.returncode == 0 and (ws / "models" / "teacher.pt").read_bytes() == teacher
    assert_consistent(ws, api)

    # The whole workspace moved elsewhere: nothing recomputed, lineage still verifies.
    moved = tmp_path / "moved"
    shutil.copytree(ws, moved, symlinks=True)
    out = cli(moved, "run", api=api)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "moved from" in out.stderr
    assert "nothing changed since run" in out.stdout
    audit = cli(moved, "audit", "models:/shrinkflow-digits@champion", "--verify", api=api)
    assert audit.returncode == 0, audit.stdout[-3000:]


def test_a_corrupt_tracking_store_is_one_line(ws, api):
    (ws / "mlflow.db").write_bytes(b"this is not a database" * 100)
    out = cli(ws, "run", api=api)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "not a usable SQLite database" in out.stderr
    assert len([ln for ln in out.stderr.splitlines() if ln.startswith("error:")]) == 1


def test_a_full_disk_is_one_line(monkeypatch, tmp_path):
    import errno

    import shrinkflow.flows.pipeline as pipeline
    from typer.testing import CliRunner

    from shrinkflow.app.cli import app

    ws = make_workspace(tmp_path / "ws", tmp_path / "remote")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(ws / "models" / "x.pt"))

    monkeypatch.setattr(pipeline, "run_pipeline", full)
    out = CliRunner().invoke(app, ["run", "--workspace", str(ws), "--force", "all"])
    assert out.exit_code == 1
    assert "disk full" in out.output and "x.pt" in out.output and "Traceback" not in out.output
