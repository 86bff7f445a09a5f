"""Record-keeping as tasks, run in the flow's process after compute (never cached: each
run records and decides for itself). Each wraps one function of
:mod:`shrinkflow.ops.record` or the MLflow adapter."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from prefect import task
from prefect.utilities.annotations import quote

from shrinkflow.decide.select import Decision, ModelResult
from shrinkflow.ops import record, tracking
from shrinkflow.ops.tracking import RunRef

_RETRY: dict[str, Any] = {"retries": 2, "retry_delay_seconds": 3}


def recording(name: str, **options: Any) -> Callable[[Callable], Callable]:
    """A record-keeping task, called with its arguments quoted. They hold no futures (the
    plan, every step's record, the decisions), and Prefect would otherwise walk each
    field of each one twice per call looking for some: 2 s of a cold run's serial tail
    on a slow core."""
    def wrap(fn: Callable) -> Callable:
        t = task(name=name, **options)(fn)

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            return t(*map(quote, args), **{k: quote(v) for k, v in kwargs.items()})

        return call

    return wrap


@recording("start-run", **_RETRY)
def start_run(uri: str, experiment: str, artifact_location: str | None,
              params: dict[str, Any], tags: dict[str, str]) -> RunRef:
    return tracking.start_pipeline_run(uri, experiment, artifact_location, params, tags)


@recording("decide")
def decide(plan, records, state_dir: str | None = None
           ) -> dict[str, tuple[list[ModelResult], Decision]]:
    return record.decide_all(plan, records, state_dir)


@recording("dvc-record", retries=1, retry_delay_seconds=2)
def record_dvc(params, ws, failures: list[str]) -> dict[str, Any]:
    return record.record_dvc(params, ws, failures)


@recording("log-models", **_RETRY)
def log_models(run: RunRef, plan, records, decisions, info) -> dict[str, dict[str, Any]]:
    return record.log_models(run, plan, records, decisions, info)


@recording("log-lineages", **_RETRY)
def log_lineages(run: RunRef, plan, records, logged, info) -> None:
    record.log_lineages(run, plan, records, logged, info)


@recording("register", **_RETRY)
def register_and_promote(run: RunRef, plan, target, results, decision, records, logged, info):
    return record.register_and_promote(run, plan, target, results, decision, records, logged,
                                       info)


@recording("report")
def report(ws, run_id: str, decisions, moves: dict[str, str], machine: str):
    return record.write_report(ws, run_id, decisions, moves, machine)


@recording("tag-run", **_RETRY)
def tag_run(ref: RunRef, tags: dict[str, str], artifacts: list[str] = (),
            text: dict[str, str] | None = None) -> None:
    tracking.set_tags(ref, tags)
    for path in artifacts:
        tracking.log_artifact(ref, path)
    for name, content in (text or {}).items():
        tracking.log_text(ref, content, name)


@recording("end-run", **_RETRY)
def end_run(ref: RunRef, status: str, error: str | None = None) -> None:
    tracking.end_run(ref, status, error)


@recording("prefect-artifacts")
def publish_artifacts(decisions: dict[str, tuple[list[ModelResult], Decision]], report_md: str,
                      run: RunRef) -> None:
    """The run table and the report as Prefect artifacts, linked to the MLflow run."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from shrinkflow.steps.validate import accuracy_key

    rows = [{"target": t, "model": m.name,
             "accuracy %": round(m.values.get(accuracy_key(t), 0.0) * 100, 2),
             "size KB": round(m.values.get("size_bytes", 0.0) / 1000, 1),
             "b256 ms": round(m.values.get("latency_p50_ms_b256", 0.0), 3),
             "MACs": int(m.values.get("macs", 0)),
             "gate": "pass" if decision.verdicts[m.name].passed else "fail",
             "selected": m.name == decision.selected}
            for t, (results, decision) in decisions.items() for m in results]
    where = f"MLflow run {run.run_id} ({run.tracking_uri})"
    create_table_artifact(rows, key="shrinkflow-models", description=f"Validated models; {where}")
    create_markdown_artifact(report_md + f"\n\n{where}\n", key="shrinkflow-report",
                             description=f"Run report; {where}")
