"""The CLI refuses bad input before any server starts: one line, no traceback, exit 1."""

import subprocess
import sys
import time

import pytest

from tests.conftest import REPO


def shrinkflow(*args, cwd=REPO, env=None):
    import os

    return subprocess.run([sys.executable, "-m", "shrinkflow.app.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def one_line_error(out, message):
    assert out.returncode == 1, out.stdout + out.stderr
    assert message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    lines = [ln for ln in out.stderr.splitlines() if ln.strip() and not ln.startswith("note:")]
    assert len(lines) == 1 and lines[0].startswith("error:"), out.stderr  # never wrapped


def test_help_lists_commands():
    out = shrinkflow("--help")
    assert out.returncode == 0
    for cmd in ("run", "models", "promote", "rollback", "audit", "reproduce", "dvc-yaml"):
        assert cmd in out.stdout


@pytest.mark.parametrize("args, message", [
    (["--set", "train.lr=-1"], "train.lr: must be > 0"),
    (["--set", "bogus.key=1"], "bogus: unknown key"),
    (["--params", "missing.yaml"], "missing.yaml: params file not found"),
    (["--set", "train.seed=99999999999999999999999"], "train.seed: must be <= 4294967295"),
    (["--set", "base.tracking_uri=foo://bar"], "unknown scheme 'foo'"),
    (["--set", "registry.model_name=a/b"], "registry.model_name: must match"),
    (["--set", "train.model.blocks=[[4],[4],[4],[4],[4]]"], "pool a 8x8 input 4 times"),
    (["--set", "prepare.dataset=npz", "--set", "prepare.path=nope.npz"],
     "prepare.path: "),
])
def test_bad_params_exit_nonzero_without_traceback(args, message, tmp_path):
    start = time.perf_counter()
    out = shrinkflow("run", "--workspace", str(tmp_path), *args, cwd=tmp_path)
    one_line_error(out, message)
    assert time.perf_counter() - start < 30  # refused before any server (5 s when idle)
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / ".shrinkflow").exists()


@pytest.mark.parametrize("content, message", [
    (b"train: {epochs: 3\n", "YAML syntax error"),
    (b"", "the params file is empty"),
    (b"# nothing but a comment\n", "the params file is empty"),
    (b"train: {epochs: 3}\n\xff", "not UTF-8 text"),
])
def test_bad_params_files(tmp_path, content, message):
    (tmp_path / "params.yaml").write_bytes(content)
    one_line_error(shrinkflow("run", "--workspace", str(tmp_path), cwd=tmp_path), message)


def test_a_tracking_server_that_is_down_fails_in_seconds(tmp_path):
    start = time.perf_counter()
    out = shrinkflow("run", "--workspace", str(tmp_path), cwd=tmp_path,
                     env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    one_line_error(out, "cannot reach MLflow at http://127.0.0.1:9")
    for cmd in (["models"], ["promote"], ["audit", "models:/x@champion"]):
        out = shrinkflow(*cmd, "--workspace", str(tmp_path), cwd=tmp_path,
                         env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
        one_line_error(out, "cannot reach MLflow at http://127.0.0.1:9")
    assert time.perf_counter() - start < 60


def test_a_workspace_typo_creates_nothing(tmp_path):
    out = shrinkflow("models", "--workspace", str(tmp_path / "typo"), cwd=tmp_path)
    one_line_error(out, "no such directory")
    assert not (tmp_path / "typo").exists()
    out = shrinkflow("models", "--workspace", str(tmp_path), cwd=tmp_path)
    one_line_error(out, "no MLflow store at")
    assert not (tmp_path / "mlflow.db").exists()


def test_predict_refuses_garbage_and_nan(tmp_path):
    import numpy as np

    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    np.savez(tmp_path / "x.npz", x=np.zeros((2, 8, 8), np.float32))
    one_line_error(shrinkflow("predict", str(tmp_path / "bad.onnx"), str(tmp_path / "x.npz"),
                              "--workspace", str(tmp_path), cwd=tmp_path), "not an ONNX model")
    np.savez(tmp_path / "nan.npz", x=np.full((2, 8, 8), np.nan, np.float32))
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 8, 8), np.float32))
    for f in ("nan.npz", "empty.npz"):
        out = shrinkflow("predict", str(tmp_path / "bad.onnx"), str(tmp_path / f),
                         "--workspace", str(tmp_path), cwd=tmp_path)
        assert out.returncode == 1 and "Traceback" not in out.stderr
