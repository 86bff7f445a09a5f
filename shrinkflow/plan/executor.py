"""The executor: runs a plan's steps, each exactly once, in dependency order.

Every runner of the pipeline goes through :func:`execute`: the Prefect flow (which
passes a ``submit`` that turns each step into a task on its Dask cluster), the DVC stage
entry points and ``reproduce`` (which run steps in-process, one at a time). A step first
looks for its content key in the store; only a miss computes. :func:`run_step` is what a
worker process runs: fixed threads, the step's function, the result committed to the
store atomically.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shrinkflow.core import env, machine
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.files import copy_atomic, file_sha256, path_sha256, write_text_atomic
from shrinkflow.core.workspace import Workspace
from shrinkflow.plan.plan import Plan, PlanStep
from shrinkflow.plan.store import StepRecord, Store
from shrinkflow.steps import base as steps

log = logging.getLogger("shrinkflow")

# Steps of these kinds are measured alone: submitted only after everything else is done.
MEASURE_ALONE = ("latency",)


class SystemSampler:
    """CPU and memory of this process, sampled every second while a step runs (MLflow's
    system metrics, measured in the worker that did the work)."""

    def __init__(self, every: float = 1.0):
        self.every, self.samples = every, []
        self._stop = None

    def __enter__(self) -> SystemSampler:
        import threading

        import psutil

        proc, self._stop = psutil.Process(), threading.Event()
        proc.cpu_percent()
        t0 = time.perf_counter()

        def sample() -> None:
            while not self._stop.wait(self.every):
                self.samples.append({"t": round(time.perf_counter() - t0, 2),
                                     "cpu_percent": proc.cpu_percent(),
                                     "rss_mb": round(proc.memory_info().rss / 2**20, 1)})

        self._thread = threading.Thread(target=sample, daemon=True, name="system-sampler")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def worker_id() -> str:
    """The Dask worker address when running on one, else host:pid."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


def _inputs(step: PlanStep, records: dict[str, StepRecord]) -> dict[str, Any]:
    """The typed input records of ``step``, by role."""
    out: dict[str, Any] = {}
    for role, ref in step.inputs.items():
        out[role] = [records[r].output() for r in ref] if isinstance(ref, list) \
            else records[ref].output()
    return out


def _hashes(step: PlanStep, records: dict[str, StepRecord]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for role, ref in step.inputs.items():
        out[role] = [records[r].sha256 for r in ref] if isinstance(ref, list) \
            else records[ref].sha256
    return out


def cache_key(step: PlanStep, records: dict[str, StepRecord]) -> str:
    return step.cache_key(_hashes(step, records))


def run_step(step: PlanStep, upstream: dict[str, StepRecord], store_root: str,
             threads: int, force: bool = False) -> StepRecord:
    """Run one step (in a worker process, or in-process): serve it from the store when
    its key is there (unless ``force``), else compute it with ``threads`` intra-op threads
    and commit it."""
    env.setup()
    from shrinkflow.models.spec import add_import_root

    # Model factories are imported from the workspace (<root>/.shrinkflow/store).
    add_import_root(Path(store_root).resolve().parents[1])
    store = Store(store_root)
    key = cache_key(step, upstream)
    hit = None if force else store.get(key)
    if hit is not None:
        return hit
    kind = steps.kind(step.kind)
    scratch = store.scratch(key)
    start = time.perf_counter()
    try:
        import torch

        torch.set_num_threads(threads)
        ctx = steps.Context(out_dir=scratch, threads=threads, model=step.model or step.id)
        with SystemSampler() as sampler:
            record = kind.run(step.config, ctx, **_inputs(step, upstream))
    except BaseException:
        store.discard(scratch)
        raise
    seconds = round(time.perf_counter() - start, 3)
    rec = StepRecord(step_id=step.id, kind=step.kind, key=key,
                     record_type=type(record).__name__, record=record.model_dump(mode="json"),
                     seconds=seconds, worker=worker_id(),
                     machine={**machine.fingerprint(), **machine.torch_kernels()},
                     threads=threads,
                     created=datetime.now(UTC).isoformat(timespec="milliseconds"),
                     system=sampler.samples)
    log.info("%s finished in %.1f s on %s", step.id, seconds, rec.worker)
    return store.commit(key, scratch, rec)


def resolve_cached(plan: Plan, store: Store, steps_: Iterable[PlanStep],
                   refresh: set[str] = frozenset(), known: dict[str, StepRecord] | None = None
                   ) -> dict[str, StepRecord]:
    """Records of the steps the store already holds, found by walking the plan: a step's
    key is known once its inputs' records are. ``refresh`` names step kinds (or ids) to
    recompute on purpose."""
    records = dict(known or {})
    for step in steps_:
        if step.id in records or step.kind in refresh or step.id in refresh:
            continue
        if not all(i in records for i in step.input_ids()):
            continue
        hit = store.get(cache_key(step, records))
        if hit is not None:
            records[step.id] = hit
    return records


Submit = Callable[[PlanStep, dict[str, Any], bool], Any]


def _result(handle: Any) -> StepRecord:
    return handle.result() if hasattr(handle, "result") else handle


def execute(plan: Plan, ws: Workspace, wanted: list[str] | None = None,
            submit: Submit | None = None, refresh: set[str] = frozenset(),
            known: dict[str, StepRecord] | None = None,
            quiet: Callable[[], Any] | None = None) -> dict[str, StepRecord]:
    """Run the steps ``wanted`` (default: all) and what they depend on; return every
    step's record. ``submit(step, upstream)`` hands a step to a task runner and returns
    a future (upstream values may be futures; the flag forces a recompute); without it,
    steps run here in order. ``quiet()`` is called before the steps measured alone
    (latency), to end the caller's own background work."""
    store = Store(ws.store_dir)
    todo = plan.upstream(wanted) if wanted else list(plan.steps)
    done = resolve_cached(plan, store, todo, refresh, known)
    threads = plan.params.base.torch_threads

    def launch(step: PlanStep, handles: dict[str, Any]) -> Any:
        upstream = {i: done.get(i) or handles[i] for i in step.input_ids()}
        force = step.kind in refresh or step.id in refresh
        if submit is None:
            upstream = {i: _result(h) for i, h in upstream.items()}
            return run_step(step, upstream, str(store.root), threads, force)
        return submit(step, upstream, force)

    handles: dict[str, Any] = {}
    pending = [s for s in todo if s.id not in done]
    later = [s for s in pending if s.kind in MEASURE_ALONE]
    for step in pending:
        if step.kind not in MEASURE_ALONE:
            handles[step.id] = launch(step, handles)
    results = {sid: _result(h) for sid, h in handles.items()}  # raises a step's own error
    done.update(results)
    if later and quiet is not None:
        quiet()
    for step in later:  # measured alone: nothing else is running now
        done[step.id] = _result(launch(step, {}))
    return done


def missing(plan: Plan, records: dict[str, StepRecord], wanted: list[str] | None = None
            ) -> list[str]:
    todo = plan.upstream(wanted) if wanted else plan.steps
    return [s.id for s in todo if s.id not in records]


MANIFEST = "exports/manifest.json"


def publish(plan: Plan, records: dict[str, StepRecord], ws: Workspace,
            paths: Iterable[str] | None = None) -> list[str]:
    """Copy step outputs to the workspace paths dvc.yaml declares (only where what is
    there differs), and list the target artifacts in ``exports/manifest.json``; returns
    the paths written. A target's failed conversion has nothing to publish."""
    written = []
    wanted = list(paths or plan.outputs)
    for rel in wanted:
        rec = records.get(plan.outputs[rel])
        if rec is None:
            raise ShrinkflowError(f"publish {rel}: step {plan.outputs[rel]} has no result")
        if not rec.record.get("path"):
            continue
        src = Path(rec.record["path"])
        dest = ws.root / rel
        if dest.exists() and path_sha256(dest) == rec.sha256:
            continue
        copy_atomic(src, dest)
        written.append(rel)
    if any(rel.startswith(("onnx/", "exports/")) for rel in wanted):
        manifest = {rel: {"step": sid, "sha256": records[sid].sha256,
                          "format": records[sid].record.get("format", ""),
                          "failure": records[sid].record.get("failure", "")}
                    for rel, sid in sorted(plan.outputs.items())
                    if rel.startswith("exports/") and sid in records}
        text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
        path = ws.root / MANIFEST
        if not path.is_file() or path.read_text() != text:
            write_text_atomic(path, text)
            written.append(MANIFEST)
    return written


def stale_outputs(plan: Plan, ws: Workspace) -> list[Path]:
    """Published files (and target artifact directories) of models no longer in the plan."""
    found = [*ws.root.glob("models/*.pt"), *ws.root.glob("onnx/*.onnx"),
             *ws.root.glob("exports/*/*")]
    return [p for p in found if ws.relative(p) not in plan.outputs]


def published_intact(plan: Plan, records: dict[str, StepRecord], ws: Workspace) -> bool:
    """Every published path holds exactly its step's output."""
    for rel, sid in plan.outputs.items():
        rec, dest = records.get(sid), ws.root / rel
        if rec is not None and not rec.record.get("path"):
            continue  # a failed conversion publishes nothing
        if rec is None or not dest.exists():
            return False
        if (file_sha256(dest) if dest.is_file() else path_sha256(dest)) != rec.sha256:
            return False
    return True
