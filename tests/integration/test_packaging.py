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
    for package in ("shrinkflow", "shrinkflow/compress", "tasks", "flows"):
        assert (target / package / "__init__.py").is_file(), package
    assert not (target / "tests").exists()

    # Only the installed copy is importable: the repo is neither cwd nor on the path.
    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONSAFEPATH": "1"}
    code = ("import shrinkflow, tasks.train, flows.pipeline, pathlib;"
            "print(pathlib.Path(shrinkflow.__file__).parent)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(target / "shrinkflow")

    # The whole pipeline from the installed copy, in an empty directory (built-in
    # defaults, no DVC workspace): it runs and says DVC was skipped.
    work = tmp_path / "work"
    work.mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "shrinkflow.cli", "run", "--set", "train.epochs=1",
         "--set", "validate.repeats_b1=5", "--set", "validate.repeats_b256=3"],
        cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "teacher" in run.stdout and "not a DVC workspace" in run.stdout
    assert (work / "onnx" / "teacher.onnx").is_file() and (work / "mlflow.db").is_file()
