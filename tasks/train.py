"""Step ``train``: train the teacher from scratch."""

from __future__ import annotations

import sys

from prefect import task

from shrinkflow import training
from shrinkflow.artifacts import DataArtifact, ModelArtifact
from shrinkflow.config import TrainParams
from shrinkflow.data import data_record
from tasks._common import compute_slot, stage_main, step_options


@task(name="train", **step_options("train"))
def train(params: TrainParams, data: DataArtifact, out_path: str, threads: int) -> ModelArtifact:
    with compute_slot():
        return training.train(params, data, out_path, threads)


def main() -> int:
    return stage_main(lambda p, ws: training.train(
        p.train, data_record(ws.data_dir), ws.checkpoint("teacher"), p.base.torch_threads))


if __name__ == "__main__":
    sys.exit(main())
