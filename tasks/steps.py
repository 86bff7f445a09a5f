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


def submitter(store: str, threads: int, priorities: dict[str, int] | None = None):
    """The executor's ``submit``: a step becomes a task run on the flow's task runner,
    with its Dask priority (``shrinkflow.plan.order``: the longest chain starts first)."""
    import dask

    priorities = priorities or {}

    def submit(step: PlanStep, upstream: dict[str, Any], force: bool):
        t = STEP_TASKS[step.kind].with_options(task_run_name=step.id)
        with dask.annotate(priority=priorities.get(step.id, 0)):
            return t.submit(step, upstream, store, threads, force)

    return submit
