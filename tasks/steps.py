"""One Prefect task per step kind, generated from the step registry.

A task's name is the step kind (``train``, ``prune``, ...); each task run is named after
the model and step it serves (``p80_ft:finetune``). The task runs the executor's
:func:`run_step` wherever the task runner puts it (a Dask worker process).
"""

from __future__ import annotations

from typing import Any

from prefect import Task, task

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.plan.executor import run_step
from shrinkflow.plan.plan import PlanStep
from shrinkflow.plan.store import StepRecord
from shrinkflow.steps import base as steps


def retry_unless_user_error(task, task_run, state) -> bool:
    """Retry transient failures; a ShrinkflowError (bad input) fails the same way again."""
    try:
        state.result()
    except ShrinkflowError:
        return False
    except Exception:
        return True
    return False


def _make(kind: steps.StepKind) -> Task:
    def run(step: PlanStep, upstream: dict[str, StepRecord], store: str, threads: int,
            force: bool = False) -> StepRecord:
        return run_step(step, upstream, store, threads, force)

    run.__name__ = run.__qualname__ = kind.name
    run.__doc__ = f"Step {kind.name!r}: {kind.doc}"
    return task(name=kind.name, retries=1, retry_delay_seconds=2,
                retry_condition_fn=retry_unless_user_error, persist_result=False)(run)


STEP_TASKS: dict[str, Task] = {name: _make(k) for name, k in steps.kinds().items()}


def submitter(store: str, threads: int):
    """The executor's ``submit``: a step becomes a task run on the flow's task runner.

    Upstream records come by value (the executor submits a step once its inputs are
    done, so Dask may place it on any free worker); the upstream task runs are named as
    the run's inputs, so Prefect's UI still draws the dependency graph."""
    from prefect.client.schemas.objects import TaskRunResult
    from prefect.context import FlowRunContext
    from prefect.utilities.callables import get_call_parameters

    runs: dict[str, Any] = {}  # step id -> its task run id

    def submit(step: PlanStep, upstream: dict[str, StepRecord], force: bool):
        t = STEP_TASKS[step.kind].with_options(task_run_name=step.id)
        parameters = get_call_parameters(t.fn, (step, upstream, store, threads, force), {})
        inputs = {TaskRunResult(id=runs[i]) for i in upstream if i in runs}
        future = FlowRunContext.get().task_runner.submit(
            t, parameters, dependencies={"upstream": inputs} if inputs else None)
        runs[step.id] = future.task_run_id
        return future

    return submit


def first_done(futures: list[Any]) -> Any:
    """The executor's ``wait_any``: the first of ``futures`` to finish."""
    from prefect.futures import as_completed

    return next(iter(as_completed(futures)))
