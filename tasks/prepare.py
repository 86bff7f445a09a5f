"""Step ``prepare``: load the configured dataset, split and normalise it."""

from __future__ import annotations

import sys

from prefect import task

from shrinkflow import data
from shrinkflow.artifacts import DataArtifact
from shrinkflow.config import PrepareParams
from tasks._common import stage_main, step_options


@task(name="prepare", **step_options("prepare"))
def prepare(params: PrepareParams, out_dir: str) -> DataArtifact:
    return data.prepare(params, out_dir)


def main() -> int:
    return stage_main(lambda p, ws: data.prepare(p.prepare, ws.data_dir))


if __name__ == "__main__":
    sys.exit(main())
