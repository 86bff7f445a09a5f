"""`dvc repro` runs the same steps as the flow and gets the same numbers; a clean clone
can `dvc pull` what a flow run pushed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from shrinkflow.plan.params import load_params
from tests.conftest import fast_overrides, make_workspace, venv_env, write_params

pytestmark = pytest.mark.slow


def run(cmd, cwd):
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=venv_env(),
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_dvc_repro_matches_flow_and_clean_clone_pulls(prefect_harness, tmp_path):
    from shrinkflow.flows.pipeline import run_pipeline

    dvc = [sys.executable, "-m", "dvc"]
    flow_ws = make_workspace(tmp_path / "flow", tmp_path / "remote")
    repro_ws = make_workspace(tmp_path / "repro", tmp_path / "remote2")
    for ws in (flow_ws, repro_ws):
        write_params(ws, fast_overrides())

    result = run_pipeline(load_params(flow_ws / "params.yaml"), flow_ws)
    # The flow's outputs are recorded: DVC sees nothing to redo.
    assert "up to date" in run([*dvc, "status"], flow_ws)

    run([*dvc, "repro"], repro_ws)
    # An experiment that changes only the selection rule re-runs only validate.
    subprocess.run(["git", "add", "-A"], cwd=repro_ws, check=True)
    subprocess.run(["git", "-c", "user.email=t@e", "-c", "user.name=t", "commit", "-qm", "repro"],
                   cwd=repro_ws, check=True)
    exp = run([*dvc, "exp", "run", "-S", "select.objective=most_accurate"], repro_ws)
    assert "Stage 'train' didn't change, skipping" in exp or "train" not in exp.split("Running")[-1]
    shown = json.loads(run([*dvc, "exp", "show", "--json"], repro_ws))
    assert "most_accurate" in json.dumps(shown)
    by_repro = json.loads((repro_ws / "metrics" / "validate.json").read_text())
    assert set(by_repro) == set(result.metrics) == {"teacher", "pr", "pr_q8"}
    for name, by_flow in result.metrics.items():
        for key in ("test_accuracy", "onnx_test_accuracy", "params", "size_bytes", "sparsity"):
            assert by_repro[name][key] == pytest.approx(by_flow[key], abs=1e-6), (name, key)
    assert by_repro["teacher"]["parity_max_abs_diff"] < 1e-3

    # A clean clone restores the flow's outputs from the remote.
    # What DVC tells a user to commit: dvc.lock, params and the .gitignore files it wrote.
    subprocess.run(["git", "add", "-A"], cwd=flow_ws, check=True)
    subprocess.run(["git", "-c", "user.email=t@e", "-c", "user.name=t", "commit", "-qm", "run"],
                   cwd=flow_ws, check=True)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(flow_ws), str(clone)], check=True)
    run([*dvc, "remote", "add", "-d", "--local", "-f", "test", str(tmp_path / "remote")], clone)
    run([*dvc, "pull"], clone)
    assert (clone / "onnx" / "teacher.onnx").read_bytes() == \
        (flow_ws / "onnx" / "teacher.onnx").read_bytes()
    assert "up to date" in run([*dvc, "status"], clone)
