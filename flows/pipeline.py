"""The pipeline flow: the plan's steps as tasks on a Dask cluster, then the record-keeping
tasks. Wiring only: what each step does is in ``shrinkflow.steps``, how the plan is
made and run in ``shrinkflow.plan``, what gets recorded in ``shrinkflow.ops.record``."""

from __future__ import annotations

import contextvars
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path

from prefect import flow, tags
from shrinkflow.flows import runner
from shrinkflow.tasks import record as rec
from shrinkflow.tasks.steps import submitter

from shrinkflow.core.errors import GateFailure
from shrinkflow.core.files import remove
from shrinkflow.core.workspace import Workspace
from shrinkflow.ops import record
from shrinkflow.ops.record import Outcome
from shrinkflow.ops.tracking import TAG, resolve_tracking_uri
from shrinkflow.plan.executor import execute, publish, stale_outputs
from shrinkflow.plan.order import priorities
from shrinkflow.plan.params import Params, tracking_uri
from shrinkflow.plan.plan import TARGET, Plan, build_plan


@flow(name="shrinkflow", log_prints=False, persist_result=False)
def pipeline(params: Params, workspace: str = ".", refresh: list[str] | None = None) -> Outcome:
    """Prepare, train, derive every variant, convert, validate; decide, record, promote."""
    with runner.untagged_tasks():
        return _pipeline(params, workspace, refresh)


def _pipeline(params: Params, workspace: str, refresh: list[str] | None) -> Outcome:
    ws, timing = Workspace.at(workspace), {"body_start": time.perf_counter()}
    with _timed(timing, "plan"):
        plan = build_plan(params, ws.root)
        info = record.run_info(plan, ws)
    uri = resolve_tracking_uri(tracking_uri(params), ws.root)
    # The MLflow run starts beside the steps (MLflow's import, and a new store's
    # creation, cost seconds that nothing computed needs; the steps record nothing in
    # it), and is started before latency is measured: nothing else may run then.
    starting = _in_background(timing, "mlflow_start", rec.start_run, uri,
                              params.base.experiment,
                              ws.resolve(params.base.artifact_location).as_uri(), params.dump(),
                              {**record.pipeline_tags(plan, ws, info), **_flow_run_tag()})
    closing = run = None
    try:
        with _timed(timing, "compute"):
            records = execute(plan, ws, submit=submitter(str(ws.store_dir),
                                                         params.base.torch_threads,
                                                         priorities(plan)),
                              refresh=set(refresh or ()), quiet=starting.exception)
        closing = runner.release_local_cluster()  # no step runs after this
        with _timed(timing, "mlflow_start_wait"):
            run = starting.result()
        timing["steps_own"] = round(sum(r.seconds for r in records.values() if not r.cached), 2)
        outcome = _record(run, plan, records, ws, info, timing)
        if outcome.rejected.get("teacher"):  # nothing trustworthy: the run fails
            raise GateFailure([f"teacher: {r}" for r in outcome.rejected["teacher"]])
    except BaseException as exc:
        # The tracking server may be what failed: keep the first cause.
        with suppress(Exception):
            run = run or starting.result()
            rec.end_run(run, "FAILED", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if closing is not None:
            closing.join()
    rec.end_run(run, "FINISHED")
    outcome.timing["body_end"] = time.perf_counter()  # the outcome holds a copy of timing
    return outcome


def _flow_run_tag() -> dict[str, str]:
    """The Prefect flow run (the outermost) that owns this MLflow run: a later run ends
    it if that flow run ended without ending it (see tracking.end_abandoned)."""
    from prefect.runtime import flow_run

    root = flow_run.root_flow_run_id or flow_run.id
    return {f"{TAG}prefect_flow_run": str(root)} if root else {}


def _commit_then_push(params: Params, ws: Workspace, teacher_failed: list[str]):
    """Record the outputs in DVC, then start their push at once (it waited for the end
    of MLflow's logging: ~2 s of every cold run); the push's future, to collect."""
    dvc = rec.record_dvc(params, ws, teacher_failed)
    return dvc, record.start_dvc_push(params, ws, dvc)


def _in_background(timing: dict[str, float], what: str, fn, *args) -> Future:
    """``fn(*args)`` (a task) in a thread of this flow run (its Prefect context copied);
    ``timing[what]`` gets its duration."""
    def timed():
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            timing[what] = round(time.perf_counter() - start, 2)

    pool = ThreadPoolExecutor(1, thread_name_prefix=f"shrinkflow-{what}")
    future = pool.submit(contextvars.copy_context().run, timed)
    pool.shutdown(wait=False)
    return future


@contextmanager
def _timed(timing: dict[str, float], what: str):
    start = time.perf_counter()
    yield
    timing[what] = round(time.perf_counter() - start, 2)


def _record(run, plan: Plan, records, ws: Workspace, info, timing) -> Outcome:
    """Publish, decide (per target), record in DVC and MLflow, register and promote (per
    target), report."""
    params = plan.params
    with _timed(timing, "decide"):
        decisions = rec.decide(plan, records, str(ws.state_dir))
    results, decision = decisions[TARGET]
    teacher_failed = [f"teacher: {r}" for r in decision.verdicts["teacher"].reasons]
    recordable = record.dvc_recordable(params, ws) is None and not teacher_failed
    removed = [ws.relative(p) for p in stale_outputs(plan, ws)] if recordable else []
    for path in removed:  # only a run that records to DVC may delete published outputs
        remove(ws.root / path)
    with _timed(timing, "publish"):
        publish(plan, records, ws)
        metric_files = record.write_metrics(ws, plan, records, decisions)
    # DVC commits and then pushes (its own processes) while MLflow logs the models in
    # this one; then each model's lineage, which names the data's DVC hash.
    committing = _in_background(timing, "dvc", _commit_then_push, params, ws, teacher_failed)
    info = {**info, "run_id": run.run_id, "data": records["prepare"].output()}
    with _timed(timing, "mlflow_models"):
        logged = rec.log_models(run, plan, records, decisions, info)
    try:
        with _timed(timing, "dvc_wait"):
            dvc, pushing = committing.result()
        info["dvc_data"] = dvc.get("data")
        with _timed(timing, "lineage"):
            rec.log_lineages(run, plan, records, logged, info)
    except BaseException:
        with suppress(Exception):
            record.fail_model_runs(run, logged)
        raise
    with _timed(timing, "dvc_push_wait"):  # pushed before any version is registered
        dvc.update(record.finish_dvc_push(pushing, ws))
    versions, promotions, moves = {}, {}, {}
    with _timed(timing, "registry"):
        for target, (t_results, t_decision) in decisions.items():
            if t_decision.selected and params.registry.auto_promote and not teacher_failed:
                version, promotion = rec.register_and_promote(
                    run, plan, target, t_results, t_decision, records, logged, info)
                versions[target], promotions[target] = version, promotion
                verb = "promoted to champion" if promotion.promoted else "not promoted"
                moves[target] = f"v{version} {verb}: {promotion.reason}"
    machine = record.machine_line(plan, records)
    report_start = time.perf_counter()
    md, png = rec.report(ws, run.run_id, decisions, moves, machine)
    reused = sorted(s for s, r in records.items() if r.cached)
    computed = [s.id for s in plan.steps if s.id in records and not records[s.id].cached]
    rec.tag_run(run, {f"{TAG}selected": decision.selected or "", f"{TAG}selection": decision.why,
                      **{f"{TAG}selected.{t}": d.selected or "" for t, (_, d) in decisions.items()
                         if t != TARGET},
                      f"{TAG}reused": ",".join(reused)[:4900],
                      f"{TAG}computed": ",".join(computed)[:4900],
                      f"{TAG}plan_key": record.plan_key(plan, records),
                      f"{TAG}dvc_lock_sha256": dvc.get("dvc_lock_sha256", ""),
                      f"{TAG}dvc_data_md5": (dvc.get("data") or {}).get("md5", ""),
                      f"{TAG}data_fingerprint": info["data"].fingerprint,
                      f"{TAG}dataset": info["data"].dataset},
                artifacts=[str(md), str(png), *map(str, metric_files),
                           *map(str, record.latency_artifacts(plan, records, ws))],
                text={"params.yaml": params.yaml()})
    rec.publish_artifacts(decisions, Path(md).read_text(), run)
    timing["report"] = round(time.perf_counter() - report_start, 2)
    promotion = promotions.get(TARGET)
    return Outcome(run=run, metrics={m.name: m.values for m in results}, models=logged,
                   reused=reused, computed=computed, dvc=dvc, selected=decision.selected,
                   selection=decision.why, machine=machine, removed=removed,
                   rejected={n: list(v.reasons) for n, v in decision.verdicts.items()
                             if not v.passed},
                   registered_version=versions.get(TARGET), timing=timing,
                   speed_kept=record.kept_outcomes(decision),
                   promotion=promotion.model_dump() if promotion else {}, report=str(md),
                   targets={t: record.target_summary(t, d, versions.get(t), promotions.get(t))
                            for t, (_, d) in decisions.items() if t != TARGET})


def run_pipeline(params: Params, workspace: str | Path = ".", refresh: list[str] | None = None,
                 dask_address: str | None = None, api: runner.TemporaryApi | None = None
                 ) -> Outcome:
    """Run the flow on a Dask cluster (local processes, or ``dask_address``), its task
    runs reported to the configured Prefect API (or a temporary local one: ``api``, when
    the caller started it with ``runner.prestart()``)."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    from shrinkflow.plan.params import dask_address as resolve_address

    ws = Workspace.at(workspace)
    address = resolve_address(params, dask_address)
    start = time.perf_counter()
    runner.cluster_timing.clear()
    try:
        with runner.prefect_api(api):
            api_seconds = time.perf_counter() - start
            with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: ws.state_dir / "results"}), \
                    tags(f"dataset:{params.prepare.dataset}",
                         f"objective:{params.select.objective}"):
                flow_ = pipeline.with_options(
                    task_runner=runner.task_runner(params.base.parallel_steps, address))
                outcome = flow_(params=params, workspace=str(ws.root),
                                refresh=list(refresh or []))
    finally:
        runner.discard_cluster()  # prestarted for a run that failed before its first step
    end = time.perf_counter()
    # Seconds the flow spent before its body started (flow run, Dask cluster) and after
    # it ended (cluster shut down, flow run finished, logs sent).
    t = outcome.timing
    body_start, body_end = t.pop("body_start", None), t.pop("body_end", None)
    if body_start is not None and body_end is not None:
        t.update(flow_start=round(body_start - start - api_seconds, 2),
                 flow_end=round(end - body_end, 2))
    t.update(prefect_api=round(api_seconds, 2), flow_total=round(end - start, 2),
             **{f"cluster_{k}": v for k, v in runner.cluster_timing.items()})
    return outcome
