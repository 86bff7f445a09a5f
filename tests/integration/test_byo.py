"""Bring your own model, end to end: the real flow (Prefect, Dask worker processes,
MLflow, DVC) with a factory teacher from the workspace (a residual net with skip adds),
its variants (prune, structured prune, distill into a factory MLP, QAT of that MLP,
ONNX Runtime static int8), then a second run whose teacher transfers from the version
the first one registered, onto three classes of an npz."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from shrinkflow.plan.params import load_params
from tests.conftest import fast_overrides, write_params

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "byo"
MLP = "{factory: 'byo_models.mlp:mlp', kwargs: {hidden: [32]}}"
VARIANTS = (
    "variants={"
    "pr: {from: teacher, steps: [{prune: {amount: 0.5, fit: {epochs: 1}}}]},"
    "sp: {from: teacher, steps: [{prune: {method: structured, amount: 0.5, fit: {epochs: 1}}}]},"
    f"kd: {{from: teacher, steps: [{{distill: {{student: {MLP}, fit: {{epochs: 2}}}}}}]}},"
    "kd_qat: {from: kd, steps: [{quantize: {method: qat, fit: {epochs: 1}}}]},"
    "q8: {from: teacher, steps: [{quantize: {method: static, calibration_size: 64}}]}}"
)
MODELS = ["teacher", "pr", "sp", "kd", "kd_qat", "q8"]


def _lineage(ws: Path, run_id: str) -> dict:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    local = c.download_artifacts(run_id, "lineage.json", str(ws / ".lineage"))
    return json.loads(Path(local).read_text())


def _child_runs(ws: Path, outcome) -> dict:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    runs = c.search_runs([outcome.run.experiment_id],
                         f"tags.mlflow.parentRunId = '{outcome.run.run_id}'")
    return {r.info.run_name: r.info.run_id for r in runs}


def test_factory_model_through_the_pipeline_then_transfer(prefect_harness, workspace):
    from shrinkflow.flows.pipeline import run_pipeline

    from shrinkflow.app.preflight import preflight
    from shrinkflow.core.workspace import Workspace
    from shrinkflow.models.spec import FactorySpec, factory_sha256

    shutil.copytree(FIXTURES / "byo_models", workspace / "byo_models")
    write_params(workspace, [*fast_overrides(epochs=3, variants=VARIANTS),
                             "train.model={factory: 'byo_models.resnet:resnet', "
                             "kwargs: {width: 8, blocks: 2}}", "train.lr=0.005"])
    params = load_params(workspace / "params.yaml")
    preflight(params, Workspace.at(workspace))
    first = run_pipeline(params, workspace)

    assert list(first.metrics) == MODELS
    for name in MODELS:
        assert first.metrics[name]["parity_top1_agreement"] >= 0.95, name
    assert first.metrics["teacher"]["onnx_test_accuracy"] > 0.25  # 3 short epochs; chance 0.1
    assert first.metrics["sp"]["params"] < first.metrics["teacher"]["params"]
    sha = factory_sha256(FactorySpec(factory="byo_models.resnet:resnet"))
    runs = _child_runs(workspace, first)
    teacher_lineage = _lineage(workspace, runs["teacher"])
    assert teacher_lineage["chain"][0]["factory_sha256"] == sha
    kd = _lineage(workspace, runs["kd"])
    assert [s["step"] for s in kd["chain"]][:2] == ["train", "distill"]
    assert kd["chain"][1]["factory_sha256"]  # the student's own factory file
    assert first.registered_version is not None

    # Transfer: the registered version's checkpoint starts a teacher on 3 other classes.
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = d.target < 3
    np.savez(workspace / "data" / "raw" / "three.npz", x=d.images[keep].astype(np.uint8),
             y=d.target[keep])
    uri = f"models:/{params.registered_model_name()}/{first.registered_version}"
    write_params(workspace, [*fast_overrides(epochs=2, variants="variants={}"),
                             "prepare.dataset=npz", "prepare.path=data/raw/three.npz",
                             f"train.init_from={uri}", "train.freeze=[stem]"])
    params2 = load_params(workspace / "params.yaml")
    preflight(params2, Workspace.at(workspace))
    second = run_pipeline(params2, workspace)
    assert second.metrics["teacher"]["onnx_test_accuracy"] > 0.4  # 3 classes: chance 0.33
    lineage = _lineage(workspace, _child_runs(workspace, second)["teacher"])
    source = lineage["chain"][0]["init_from"]
    assert source["uri"] == uri and source["version"] == first.registered_version
    assert source["name"] == params.registered_model_name() and len(source["sha256"]) == 64
