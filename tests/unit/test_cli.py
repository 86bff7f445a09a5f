"""The CLI refuses bad input before any compute: one line, no traceback, non-zero exit."""

import subprocess
import sys

import pytest

from tests.conftest import REPO


def shrinkflow(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "shrinkflow.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_help_lists_commands():
    out = shrinkflow("--help")
    assert out.returncode == 0
    assert "run" in out.stdout


@pytest.mark.parametrize("args, message", [
    (["--set", "train.lr=-1"], "train.lr: must be > 0"),
    (["--set", "bogus.key=1"], "bogus: unknown key"),
    (["--params", "missing.yaml"], "missing.yaml: params file not found"),
])
def test_bad_params_exit_nonzero_without_traceback(args, message, tmp_path):
    out = shrinkflow("run", "--workspace", str(tmp_path), *args, cwd=tmp_path)
    assert out.returncode == 1
    assert message in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert not (tmp_path / "mlflow.db").exists()  # refused before any work


def test_yaml_syntax_error(tmp_path):
    (tmp_path / "params.yaml").write_text("train: {epochs: 3\n")
    out = shrinkflow("run", "--workspace", str(tmp_path), cwd=tmp_path)
    assert out.returncode == 1 and "YAML syntax error" in out.stderr
    assert "Traceback" not in out.stderr
