"""MLflow logging as tasks (never cached: every pipeline execution is tracked)."""

from __future__ import annotations

from typing import Any

from prefect import task

from shrinkflow import tracking
from shrinkflow.artifacts import DataArtifact, Metrics, ModelArtifact, OnnxArtifact
from shrinkflow.tracking import RunRef

_OPTS: dict[str, Any] = {"retries": 2, "retry_delay_seconds": 3}


@task(name="start-run", **_OPTS)
def start_run(uri: str, experiment: str, artifact_location: str | None,
              params: dict[str, Any], tags: dict[str, str]) -> RunRef:
    return tracking.start_pipeline_run(uri, experiment, artifact_location, params, tags)


@task(name="log-model", **_OPTS)
def log_model(parent: RunRef, model: ModelArtifact, onnx: OnnxArtifact, metrics: Metrics,
              data: DataArtifact, step_params: dict[str, Any], tags: dict[str, str],
              lineage: dict[str, Any] | None = None) -> dict:
    return tracking.log_model_run(parent, model, onnx, metrics, data, step_params, tags,
                                  lineage)


@task(name="end-run", **_OPTS)
def end_run(ref: RunRef, status: str, error: str | None = None) -> None:
    tracking.end_run(ref, status, error)


@task(name="tag-run", **_OPTS)
def tag_run(ref: RunRef, tags: dict[str, str], artifact: str | None = None,
            text: dict[str, str] | None = None) -> None:
    """Tags, a file, and/or texts (name -> content) on a run."""
    tracking.set_tags(ref, tags)
    if artifact:
        tracking.log_artifact(ref, artifact)
    for name, content in (text or {}).items():
        tracking.log_text(ref, content, name)
