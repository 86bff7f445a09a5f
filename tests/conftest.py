"""Shared fixtures: telemetry off, tiny data, a real DVC+git workspace, Prefect's harness."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shrinkflow.core.env import setup

setup()  # telemetry off before any test imports Prefect, MLflow, DVC or ONNX Runtime

REPO = Path(__file__).resolve().parents[1]
# What a workspace needs from the repo: dvc.yaml's code deps, the DVC config, the params.
WORKSPACE_FILES = ("dvc.yaml", "params.yaml", ".dvcignore", ".dvc/config", ".dvc/.gitignore")
WORKSPACE_DIRS = ("shrinkflow", "tasks", "flows")


@pytest.fixture(autouse=True)
def _no_user_tracking_uri(monkeypatch):
    # A user's MLFLOW_TRACKING_URI must never receive test runs.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API (its own SQLite) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=test", *args],
                   cwd=cwd, check=True, capture_output=True)


def make_workspace(root: Path, remote: Path) -> Path:
    """A git + DVC workspace holding this repo's pipeline files, with a local remote."""
    root.mkdir(parents=True, exist_ok=True)
    for name in WORKSPACE_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    for name in WORKSPACE_DIRS:
        shutil.copytree(REPO / name, root / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (root / "data" / "raw").mkdir(parents=True)
    (root / "data" / "raw" / ".gitkeep").touch()
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "workspace")
    subprocess.run([sys.executable, "-m", "dvc", "remote", "add", "-d", "--local", "-f",
                    "test", str(remote)], cwd=root, check=True, capture_output=True)
    # The remote the repository's .dvc/config names (~/.cache/...) is this machine's,
    # shared by every run outside the tests: point it at an empty place here.
    subprocess.run([sys.executable, "-m", "dvc", "remote", "modify", "--local", "local", "url",
                    str(remote.parent / f"{remote.name}-unused")], cwd=root, check=True,
                   capture_output=True)
    return root


@pytest.fixture
def workspace(tmp_path) -> Path:
    return make_workspace(tmp_path / "ws", tmp_path / "remote")


SMALL_VARIANTS = (
    "variants={"
    "pr: {from: teacher, steps: [{prune: {amount: 0.5}}, {finetune: {fit: {epochs: 1}}}]},"
    "pr_q8: {from: pr, steps: [{quantize: {method: static, calibration_size: 64}}]}}"
)


def fast_overrides(epochs: int = 3, variants: str = SMALL_VARIANTS,
                   targets: str = "[onnxruntime]") -> list[str]:
    """Params that keep a real run short: few epochs, few latency repeats, two variants,
    ONNX Runtime only (tests/integration/test_targets.py covers the other runtimes)."""
    return [f"train.epochs={epochs}", "validate.repeats_b1=10", "validate.repeats_b256=3",
            "validate.warmup=1", "validate.rounds=3", "validate.max_rounds=4",
            f"targets={targets}", variants]


def write_params(ws: Path, overrides: list[str]) -> None:
    """Write the effective params into the workspace's params.yaml (as dvc exp -S does)."""
    import yaml

    from shrinkflow.plan.params import load_params

    params = load_params(ws / "params.yaml", overrides)
    (ws / "params.yaml").write_text(yaml.safe_dump(params.dump(), sort_keys=False))


def venv_env() -> dict[str, str]:
    """Environment for subprocesses: this interpreter's bin dir first on PATH (dvc stages
    call `python -m tasks.<step>`)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = ""
    return env
