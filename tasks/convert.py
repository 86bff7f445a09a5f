"""Step ``convert``: export a checkpoint to a checked ONNX file."""

from __future__ import annotations

import sys

from prefect import task

from shrinkflow import export
from shrinkflow.artifacts import ModelArtifact, OnnxArtifact
from shrinkflow.config import ConvertParams
from shrinkflow.models import model_record
from tasks._common import STEP_OPTIONS, stage_main


@task(name="convert", **STEP_OPTIONS)
def convert(model: ModelArtifact, params: ConvertParams, out_path: str) -> OnnxArtifact:
    return export.convert(model, params, out_path)


def main() -> int:
    return stage_main(lambda p, ws, name="teacher": export.convert(
        model_record(ws.checkpoint(name)), p.convert, ws.onnx(name)))


if __name__ == "__main__":
    sys.exit(main())
