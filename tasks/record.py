"""Record the flow's outputs in DVC (dvc.lock) and push them to the remote."""

from __future__ import annotations

from typing import Any

from prefect import task

from shrinkflow import versioning


@task(name="dvc-record", retries=1, retry_delay_seconds=2)
def record(root: str, push: bool) -> dict[str, Any]:
    return versioning.record_outputs(root, push=push)
