"""Stage ``compress``: one variant's chain of steps (dvc.yaml: ``compress@<variant>``).

The flow runs the same steps as separate cached tasks (``tasks.prune`` ...), sharing
prefixes between variants; this entry point runs a chain in one process for DVC.
"""

from __future__ import annotations

import sys

from prefect import task

from shrinkflow import variants
from shrinkflow.artifacts import ModelArtifact
from shrinkflow.config import Params
from shrinkflow.data import data_record
from shrinkflow.errors import ShrinkflowError
from shrinkflow.workspace import Workspace
from tasks._common import stage_main


@task(name="publish")
def publish(model: ModelArtifact, name: str, parent: str, path: str) -> ModelArtifact:
    return variants.publish(model, name, parent, path)


def _stage(p: Params, ws: Workspace, name: str | None = None) -> ModelArtifact:
    if name not in p.variants:
        raise ShrinkflowError(f"compress: give a variant name from params.yaml "
                              f"({', '.join(p.variants) or 'none defined'}), got {name!r}")
    return variants.run_chain(p, name, ws, data_record(ws.data_dir), p.base.torch_threads)


def main() -> int:
    return stage_main(_stage)


if __name__ == "__main__":
    sys.exit(main())
