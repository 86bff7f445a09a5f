"""Gates, selection, report and the model registry as tasks (never cached: cheap, and
each run must re-decide and record its own moves)."""

from __future__ import annotations

from typing import Any

from prefect import task

from shrinkflow import registry, report, selection
from shrinkflow.artifacts import DataArtifact, Metrics
from shrinkflow.config import Params

_OPTS: dict[str, Any] = {"retries": 2, "retry_delay_seconds": 3}


@task(name="decide")
def decide(results: list[Metrics], params: Params) -> selection.Decision:
    return selection.decide(results, params)


@task(name="report")
def write_report(results: list[Metrics], decision: selection.Decision, out_dir: str, stem: str,
                 title: str, promotion: str | None = None) -> tuple[str, str]:
    md, png = report.write_report(results, decision, out_dir, stem, title, promotion)
    return str(md), str(png)


@task(name="register", **_OPTS)
def register(uri: str, name: str, model_uri: str, run_id: str, values: dict[str, float],
             tags: dict[str, str], command: str) -> str:
    return registry.register(uri, name, model_uri, run_id, values, tags, command)


@task(name="promote", **_OPTS)
def promote(uri: str, name: str, version: str, params: Params, command: str,
            data: DataArtifact) -> registry.Promotion:
    return registry.promote(uri, name, version, params, command, registry.test_data_of(data))
