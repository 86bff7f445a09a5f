"""The pipeline flow: prepare -> train -> convert -> validate, tracked and versioned.

Wiring only: every step is a task around a library function. ``dvc.yaml`` runs the
same steps as stages; ``STEPS`` is what a test checks it against.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field

from shrinkflow.artifacts import Artifact
from shrinkflow.config import Params, tracking_uri
from shrinkflow.errors import GateFailure
from shrinkflow.provenance import git_info
from shrinkflow.tracking import TAG, RunRef, resolve_tracking_uri
from shrinkflow.versioning import is_dvc_workspace, params_match_file
from shrinkflow.workspace import Workspace
from tasks import record, tracking
from tasks.convert import convert
from tasks.prepare import prepare
from tasks.train import train
from tasks.validate import validate, write_metrics

# The steps this flow runs, in order; dvc.yaml's stages must be exactly these.
STEPS = ("prepare", "train", "convert", "validate")


class PipelineResult(BaseModel):
    run: RunRef
    metrics: dict[str, dict[str, float]]
    gate_failures: list[str] = Field(default_factory=list)
    models: dict[str, dict[str, str]] = Field(default_factory=dict)
    reused: list[str] = Field(default_factory=list)
    computed: list[str] = Field(default_factory=list)
    dvc: dict[str, Any] = Field(default_factory=dict)


class _Ledger:
    """Runs step tasks, noting which came from the cache and which were computed."""

    def __init__(self) -> None:
        self.reused: list[str] = []
        self.computed: list[str] = []

    def __call__(self, label: str, task, *args: Any) -> Any:
        state = task(*args, return_state=True)
        result = state.result()
        if state.name == "Cached":
            if isinstance(result, Artifact) and not result.is_intact():
                # The cache remembers a file that was since deleted or changed: redo it.
                get_run_logger().info("%s: cached output %s is gone or changed; recomputing",
                                      label, result.path)
                result = task.with_options(refresh_cache=True)(*args)
            else:
                self.reused.append(label)
                return result
        self.computed.append(label)
        return result


@flow(name="shrinkflow", log_prints=False)
def pipeline(params: Params, workspace: str = ".") -> PipelineResult:
    """Prepare the data, train the teacher, convert it to ONNX and validate it."""
    logger = get_run_logger()
    ws = Workspace.at(workspace)
    git = git_info(ws.root)
    uri = resolve_tracking_uri(tracking_uri(params), ws.root)
    run = tracking.start_run(
        uri, params.base.experiment, ws.resolve(params.base.artifact_location).as_uri(),
        params.dump(), {f"{TAG}git_commit": git["commit"], f"{TAG}git_dirty": git["dirty"],
                        "mlflow.source.git.commit": git["commit"],
                        f"{TAG}params_hash": params.config_hash()})
    step = _Ledger()
    try:
        data = step("prepare", prepare, params.prepare, str(ws.data_dir))
        tracking.tag_run(run, {f"{TAG}data_fingerprint": data.fingerprint,
                               f"{TAG}dataset": data.dataset})
        teacher = step("train", train, params.train, data, str(ws.checkpoint("teacher")),
                       params.base.torch_threads)
        onnx = step("convert", convert, teacher, params.convert, str(ws.onnx("teacher")))
        metrics = step("validate", validate, teacher, onnx, data, params.validate_)
        write_metrics([metrics], str(ws.validate_metrics))
        logged = tracking.log_model(
            run, teacher, onnx, metrics, data,
            {"train": params.train.model_dump(mode="json"),
             "convert": params.convert.model_dump(mode="json")},
            {f"{TAG}git_commit": git["commit"], f"{TAG}git_dirty": git["dirty"],
             f"{TAG}parent_run_id": run.run_id})
        failures = [f"{metrics.name}: {f}" for f in metrics.gate_failures]
        dvc: dict[str, Any] = {}
        if failures:
            pass  # outputs that failed a gate are not recorded as the pipeline's result
        elif not (params.base.dvc_commit and is_dvc_workspace(ws.root)):
            dvc = {"skipped": "not a DVC workspace" if params.base.dvc_commit else "dvc_commit off"}
        elif not params_match_file(params, ws.root):
            dvc = {"skipped": "params differ from params.yaml (--set/--params); dvc.lock "
                              "would not match them"}
        else:
            dvc = record.record(str(ws.root), params.base.dvc_push)
        if dvc.get("skipped"):
            logger.warning("DVC: outputs not recorded in dvc.lock: %s", dvc["skipped"])
        tracking.tag_run(run, {f"{TAG}reused": ",".join(step.reused),
                               f"{TAG}computed": ",".join(step.computed),
                               f"{TAG}dvc_lock_sha256": dvc.get("dvc_lock_sha256", "")},
                         artifact=str(ws.validate_metrics))
        if failures:
            raise GateFailure(failures)
    except BaseException as exc:
        tracking.end_run(run, "FAILED", f"{type(exc).__name__}: {exc}")
        raise
    tracking.end_run(run, "FINISHED")
    return PipelineResult(run=run, metrics={metrics.name: metrics.values},
                          models={metrics.name: logged}, reused=step.reused,
                          computed=step.computed, dvc=dvc)


def run_pipeline(params: Params, workspace: str | Path = ".") -> PipelineResult:
    """Run the flow in-process with its step results (the cache) kept in the workspace,
    so deleting ``.shrinkflow/`` resets the cache and workspaces never share it."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    ws = Workspace.at(workspace)
    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: ws.state_dir / "results"}):
        return pipeline(params=params, workspace=str(ws.root))
