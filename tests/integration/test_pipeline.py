"""The real flow on digits: Prefect's harness, steps on a local Dask cluster of worker
processes, MLflow on SQLite, a git+DVC workspace."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from shrinkflow.core.errors import GateFailure
from shrinkflow.plan.params import load_params
from tests.conftest import fast_overrides, write_params

pytestmark = pytest.mark.slow

METRICS = ("test_accuracy", "onnx_test_accuracy", "parity_max_abs_diff", "parity_top1_agreement",
           "latency_p50_ms_b1", "latency_p95_ms_b1", "latency_p50_ms_b256",
           "latency_p95_ms_b256", "latency_p50_ms_b256_low", "latency_p50_ms_b256_high",
           "size_bytes", "size_gzip_bytes", "params", "macs")


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


def _tags_in_prefect(flow_run_id: str) -> None:
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(UUID(flow_run_id))
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[flow_run.id])))
    assert "dataset:digits" in flow_run.tags
    names = {t.name for t in task_runs}
    assert "teacher:train" in names and any(n.startswith("start-run") for n in names)
    assert all(not t.tags for t in task_runs), [(t.name, t.tags) for t in task_runs if t.tags]


def test_flow_end_to_end_then_nothing_to_do(prefect_harness, workspace):
    from shrinkflow.flows.pipeline import run_pipeline

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
    assert teacher["latency_p50_ms_b256_low"] <= teacher["latency_p50_ms_b256"]

    # MLflow: a FINISHED parent run, a nested run per model with every metric and artifact.
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
    for key in METRICS:
        for name in MODELS:
            assert key in by_name[name].data.metrics, (name, key)
    child = by_name["teacher"]
    assert child.data.tags["shrinkflow.step"] == "train"
    assert child.data.tags["shrinkflow.workers"].startswith("tcp://")  # a Dask worker process
    # Curves per epoch, and system metrics of the worker that trained.
    history = c.get_metric_history(child.info.run_id, "train/val_accuracy")
    assert [h.step for h in history] == [1, 2, 3]
    q8 = by_name["pr_q8"]
    assert q8.data.tags["shrinkflow.parent_variant"] == "pr"
    assert q8.data.tags["shrinkflow.parent_run_id"] == by_name["pr"].info.run_id
    assert q8.data.tags["shrinkflow.quantization"] == "static"
    assert q8.data.tags["shrinkflow.step"] == "quantize"
    assert q8.data.tags["shrinkflow.weight_bits"] in ("7", "8")
    assert len(q8.data.tags["shrinkflow.calibration_fingerprint"]) == 64
    assert by_name["pr"].data.metrics["sparsity"] == pytest.approx(0.5, abs=0.02)
    assert q8.data.metrics["size_ratio_vs_teacher"] > 2  # int8
    assert by_name["kd"].data.metrics["macs"] < 0.2 * child.data.metrics["macs"]
    artifacts = {a.path for a in c.list_artifacts(child.info.run_id)}
    assert {"checkpoint", "lineage.json"} <= artifacts
    assert child.inputs.dataset_inputs[0].dataset.digest == \
        parent.data.tags["shrinkflow.data_fingerprint"][:16]
    import mlflow

    logged = mlflow.get_logged_model(first.models["teacher"]["model_id"])
    assert logged.source_run_id == child.info.run_id
    parent_artifacts = {a.path for a in c.list_artifacts(first.run.run_id)}
    assert "latency-onnxruntime.json" in parent_artifacts and "params.yaml" in parent_artifacts

    # DVC: outputs in dvc.lock and in the remote; plots data beside the metrics.
    lock = yaml.safe_load((workspace / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"prepare", "train", "convert", "validate",
                                   *(f"compress@{m}" for m in MODELS[1:])}
    assert lock["stages"]["train"]["outs"][0]["path"] == "models/teacher.pt"
    assert first.dvc["dvc_pushed"] > 0
    metrics_file = json.loads((workspace / "metrics" / "validate.json").read_text())
    assert metrics_file["teacher"]["gate_passed"] is True
    assert (workspace / "metrics" / "pareto.json").is_file()
    assert (workspace / "metrics" / "curves" / "teacher.json").is_file()

    # Gates, selection, registry: the selected model is the first champion.
    assert first.selected in MODELS and first.report and Path(first.report).is_file()
    assert Path(first.report).with_suffix(".png").is_file()
    assert first.promotion["promoted"] and "no champion yet" in first.promotion["reason"]
    for name, reasons in first.rejected.items():
        assert reasons and by_name[name].data.tags["shrinkflow.gate"] == "fail"
    champion = c.get_model_version_by_alias("shrinkflow-digits", "champion")
    assert champion.tags["shrinkflow.variant"] == first.selected
    assert champion.tags["shrinkflow.lineage"].startswith("teacher")
    assert first.selected in champion.description and "Gates:" in champion.description

    # Prefect: the flow run carries the run's tags; its task runs carry none (a tagged
    # task run costs a concurrency-slot call to the API before it starts).
    _tags_in_prefect(parent.data.tags["shrinkflow.prefect_flow_run"])

    # The same flow again: every step from the store, every model run kept (no new run,
    # no new LoggedModel), the same version, the champion kept.
    n_models = len(mlflow.search_logged_models(experiment_ids=[first.run.experiment_id]))
    second = run_pipeline(params, workspace)
    assert second.computed == []
    assert sorted(second.reused) == sorted(first.computed)
    assert all(m["reused"] for m in second.models.values())
    assert len(mlflow.search_logged_models(experiment_ids=[first.run.experiment_id])) == n_models
    assert second.registered_version == first.registered_version
    assert not second.promotion["promoted"]
    assert second.promotion["reason"] == "already the champion"

    # The command line with nothing changed: no flow, no new run, in seconds.
    from typer.testing import CliRunner

    from shrinkflow.app.cli import app

    runs_before = len(c.search_runs([first.run.experiment_id]))
    start = time.perf_counter()
    out = CliRunner().invoke(app, ["run", "--workspace", str(workspace)], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "nothing changed since run" in out.output and "champion v1 kept" in out.output
    assert time.perf_counter() - start < 30  # ~3-5 s on an idle machine
    assert len(c.search_runs([first.run.experiment_id])) == runs_before

    listed = CliRunner().invoke(app, ["models", "--workspace", str(workspace)],
                                env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    assert "champion" in listed.output and first.selected in listed.output

    # A deleted output is noticed: published again from the store, nothing recomputed.
    (workspace / "onnx" / "teacher.onnx").unlink()
    third = run_pipeline(params, workspace)
    assert third.computed == [] and (workspace / "onnx" / "teacher.onnx").is_file()


def test_failing_gate_logs_metrics_and_fails_the_run(prefect_harness, workspace):
    from shrinkflow.flows.pipeline import run_pipeline

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
    assert "gate" in parent.data.tags["shrinkflow.error"].lower()
    assert child.data.tags["shrinkflow.gate"] == "fail"
    assert "parity_max_abs_diff" in child.data.metrics
    assert not (workspace / "dvc.lock").exists()  # failed outputs are not recorded
