"""Change detection as tasks (never cached: they look at the world as it is now)."""

from __future__ import annotations

from typing import Any

from prefect import task

from shrinkflow import changes
from shrinkflow.config import Params


@task(name="inputs-state")
def inputs_state(params: Params, root: str) -> changes.InputsState:
    return changes.current_state(params, root)


@task(name="what-changed", retries=2, retry_delay_seconds=3)
def what_changed(params: Params, uri: str, root: str) -> dict[str, Any]:
    return changes.what_changed(params, uri, root)
