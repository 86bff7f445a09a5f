"""The scheduled flow: retrain and recompress only when data, code or params changed.

``shrinkflow serve --cron`` serves it; ``prefect.yaml`` deploys it to a process work
pool. Params are read from the workspace when each run starts, so an edit to
params.yaml is picked up by the next scheduled run.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from pydantic import BaseModel, Field
from shrinkflow.flows.runner import untagged_tasks

from shrinkflow.core.workspace import Workspace
from shrinkflow.ops import changes, tracking
from shrinkflow.ops.tracking import resolve_tracking_uri
from shrinkflow.plan.params import load_params, tracking_uri


class RetrainResult(BaseModel):
    status: str  # "skipped" | "ran"
    reason: str
    changed: list[str] = Field(default_factory=list)
    reused: list[str] = Field(default_factory=list)
    computed: list[str] = Field(default_factory=list)
    run_id: str | None = None
    selected: str | None = None
    promotion: dict[str, Any] = Field(default_factory=dict)


@task(name="what-changed", retries=2, retry_delay_seconds=3)
def what_changed(params, uri: str, root: str) -> dict[str, Any]:
    return changes.what_changed(params, uri, root)


def _final_state(flow_run_id: str) -> str | None:
    """The final state of a flow run (None while it runs, or when it is unknown)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(UUID(flow_run_id)).state
    except Exception:
        return None
    return state.type.value if state is not None and state.is_final() else None


def end_abandoned(uri: str, experiment: str) -> list[str]:
    return tracking.end_abandoned(uri, experiment, _final_state)


@flow(name="shrinkflow-retrain", log_prints=False, persist_result=True)
def retrain(workspace: str = ".", params_file: str = "params.yaml") -> RetrainResult:
    """Skip when nothing changed since the champion (or the last finished run); else
    run the pipeline, whose cache recomputes only what the change invalidates."""
    logger = get_run_logger()
    ws = Workspace.at(workspace)
    params = load_params(ws.resolve(params_file))
    uri = resolve_tracking_uri(tracking_uri(params), ws.root)
    for run_id in end_abandoned(uri, params.base.experiment):
        logger.warning("MLflow run %s was left RUNNING by a flow run that failed; marked "
                       "FAILED", run_id)
    with untagged_tasks():
        check = what_changed(params, uri, str(ws.root))
    if not check["changed"]:
        reason = f"skipped: nothing changed since {check['against']}"
        logger.info(reason)
        return RetrainResult(status="skipped", reason=reason)
    logger.info("changed since %s: %s", check["against"] or "-", ", ".join(check["changed"]))
    from shrinkflow.flows.pipeline import run_pipeline  # torch, ONNX: a skip never loads them

    result = run_pipeline(params, ws.root)
    logger.info("reused %d step(s) from the store; recomputed: %s", len(result.reused),
                ", ".join(result.computed) or "nothing")
    return RetrainResult(status="ran", reason="changed: " + ", ".join(check["changed"]),
                         changed=check["changed"], reused=result.reused,
                         computed=result.computed, run_id=result.run.run_id if result.run else None,
                         selected=result.selected, promotion=result.promotion)
