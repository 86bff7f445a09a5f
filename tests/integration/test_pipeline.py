"""The real flow on digits: Prefect's harness, MLflow on SQLite, a git+DVC workspace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from shrinkflow.config import load_params
from shrinkflow.errors import GateFailure
from tests.conftest import fast_overrides, write_params

pytestmark = pytest.mark.slow

METRICS = ("test_accuracy", "onnx_test_accuracy", "parity_max_abs_diff", "parity_top1_agreement",
           "latency_p50_ms_b1", "latency_p95_ms_b1", "latency_p50_ms_b256",
           "latency_p95_ms_b256", "size_bytes", "size_gzip_bytes", "params")


def _client(ws):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")


PRUNE = "{prune: {amount: 0.5}}, {finetune: {fit: {epochs: 1}}}"
VARIANTS = (
    "variants={"
    f"pr: {{from: teacher, steps: [{PRUNE}]}},"
    "pr_q8: {from: pr, steps: [{quantize: {method: static, calibration_size: 64}}]},"
    # The same two first steps as `pr`: they must run once, not twice.
    f"pr_qat: {{from: teacher, steps: [{PRUNE}, {{quantize: {{method: qat, fit: {{epochs: 1}}}}}}]}},"
    "kd: {from: teacher, steps: [{distill: {student: {blocks: [[4], [8]]}, fit: {epochs: 2}}}]}}"
)
MODELS = ["teacher", "pr", "pr_q8", "pr_qat", "kd"]


def test_flow_end_to_end_then_served_from_cache(prefect_harness, workspace):
    from flows.pipeline import run_pipeline

    write_params(workspace, fast_overrides(variants=VARIANTS))
    params = load_params(workspace / "params.yaml")
    first = run_pipeline(params, workspace)

    assert list(first.metrics) == MODELS
    assert first.computed.count("pr:prune") == 1 and "pr_qat:prune" not in first.computed
    assert "pr_qat:quantize" in first.computed and "kd:distill" in first.computed
    teacher = first.metrics["teacher"]
    assert teacher["parity_top1_agreement"] >= 0.999
    assert teacher["parity_max_abs_diff"] < 1e-3
    assert teacher["onnx_test_accuracy"] > 0.8  # 3 epochs on digits

    # MLflow: a FINISHED parent run, a nested teacher run with every metric and artifact.
    c = _client(workspace)
    parent = c.get_run(first.run.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["shrinkflow.data_fingerprint"]
    assert len(parent.data.tags["shrinkflow.git_commit"]) == 40
    assert parent.data.params["train.epochs"] == "3"
    children = c.search_runs([first.run.experiment_id],
                             f"tags.mlflow.parentRunId = '{first.run.run_id}'")
    by_name = {r.info.run_name: r for r in children}
    assert sorted(by_name) == sorted(MODELS)
    child = by_name["teacher"]
    for key in METRICS:
        for name in MODELS:
            assert key in by_name[name].data.metrics, (name, key)
    assert child.data.tags["shrinkflow.step"] == "train"
    # Variants: relative metrics, their parent (name and run), their quantization.
    q8 = by_name["pr_q8"]
    assert q8.data.tags["shrinkflow.parent_variant"] == "pr"
    assert q8.data.tags["shrinkflow.parent_run_id"] == by_name["pr"].info.run_id
    assert q8.data.tags["shrinkflow.quantization"] == "static"
    assert len(q8.data.tags["shrinkflow.calibration_fingerprint"]) == 64
    assert by_name["pr"].data.metrics["sparsity"] == pytest.approx(0.5, abs=0.02)
    assert q8.data.metrics["size_ratio_vs_teacher"] > 2  # int8
    for key in ("accuracy_drop_pp", "latency_ratio_vs_teacher_b256"):
        assert key in by_name["kd"].data.metrics
    artifacts = {a.path for a in c.list_artifacts(child.info.run_id)}
    assert "checkpoint" in artifacts
    assert child.inputs.dataset_inputs[0].dataset.digest == \
        parent.data.tags["shrinkflow.data_fingerprint"][:16]
    import mlflow

    logged = mlflow.get_logged_model(first.models["teacher"]["model_id"])
    assert logged.source_run_id == child.info.run_id

    # DVC: outputs in dvc.lock and in the remote.
    lock = yaml.safe_load((workspace / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"prepare", "train", "convert", "validate",
                                   *(f"compress@{m}" for m in MODELS[1:])}
    assert lock["stages"]["train"]["outs"][0]["path"] == "models/teacher.pt"
    assert first.dvc["dvc_pushed"] > 0
    metrics_file = json.loads((workspace / "metrics" / "validate.json").read_text())
    assert metrics_file["teacher"]["gate_passed"] is True

    # Gates, selection, registry: the selected model is the first champion.
    assert first.selected in MODELS and first.report and Path(first.report).is_file()
    assert Path(first.report).with_suffix(".png").is_file()
    assert first.promotion["promoted"] and "no champion yet" in first.promotion["reason"]
    for name, reasons in first.rejected.items():
        assert reasons and by_name[name].data.tags["shrinkflow.gate"] == "fail"
    champion = c.get_model_version_by_alias("shrinkflow-digits", "champion")
    assert champion.tags["shrinkflow.variant"] == first.selected
    assert champion.tags["shrinkflow.lineage"].startswith("teacher")

    # Nothing changed: every step is served from the cache; nothing trains; the same
    # model is selected again: no new version, champion kept with a reason.
    second = run_pipeline(params, workspace)
    assert second.computed == []
    assert sorted(second.reused) == sorted(first.computed)
    assert second.metrics == first.metrics
    assert second.registered_version == first.registered_version
    assert not second.promotion["promoted"]
    assert second.promotion["reason"] == "already the champion"

    from typer.testing import CliRunner

    from shrinkflow.cli import app

    listed = CliRunner().invoke(app, ["models", "--workspace", str(workspace)],
                                env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    assert "champion" in listed.output and first.selected in listed.output

    # A deleted output is noticed and recomputed, not silently returned from the cache.
    (workspace / "onnx" / "teacher.onnx").unlink()
    third = run_pipeline(params, workspace)
    assert third.computed == ["teacher:convert"]
    assert (workspace / "onnx" / "teacher.onnx").is_file()


def test_failing_gate_logs_metrics_and_fails_the_run(prefect_harness, workspace):
    from flows.pipeline import run_pipeline

    overrides = [*fast_overrides(1), "validate.gates.max_abs_diff=1e-12"]
    params = load_params(workspace / "params.yaml", overrides)
    with pytest.raises(GateFailure, match="parity_max_abs_diff"):
        run_pipeline(params, workspace)
    c = _client(workspace)
    exp = c.get_experiment_by_name("shrinkflow")
    runs = c.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("shrinkflow.step") == "pipeline")
    child = next(r for r in runs if r.info.run_name == "teacher")
    assert parent.info.status == "FAILED"
    assert "gate" in parent.data.tags["shrinkflow.error"]
    assert child.data.tags["shrinkflow.gate"] == "fail"
    assert "parity_max_abs_diff" in child.data.metrics
    assert not (workspace / "dvc.lock").exists()  # failed outputs are not recorded
