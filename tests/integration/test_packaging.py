"""A non-editable install works from outside the repository."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_wheel_install_imports_and_runs_outside_the_repo(tmp_path):
    target = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(REPO)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    for package in ("shrinkflow", "shrinkflow/steps", "shrinkflow/tasks", "shrinkflow/flows"):
        assert (target / package / "__init__.py").is_file(), package
    # tasks and flows live under the project's own name, never as top-level packages.
    assert not (target / "tests").exists() and not (target / "tasks").exists()

    # Only the installed copy is importable: the repo is neither cwd nor on the path.
    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONSAFEPATH": "1"}
    code = ("import shrinkflow, shrinkflow.tasks.steps, shrinkflow.flows.pipeline, pathlib;"
            "print(pathlib.Path(shrinkflow.__file__).parent)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(target / "shrinkflow")

    # Its command line and a DVC stage entry point run from there too.
    cli = subprocess.run([sys.executable, "-m", "shrinkflow.app.cli", "--help"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0 and "audit" in cli.stdout, cli.stderr[-2000:]
    work = tmp_path / "work"
    work.mkdir()
    stage = subprocess.run([sys.executable, "-m", "shrinkflow.tasks", "prepare"], cwd=work, env=env,
                           capture_output=True, text=True, timeout=300)
    assert stage.returncode == 1 and "params file not found" in stage.stderr  # clear error
    assert "Traceback" not in stage.stderr
