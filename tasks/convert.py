"""Step ``convert``: export checkpoints to checked ONNX files (and, for variants ending
in an ONNX Runtime quantize step, quantize them)."""

from __future__ import annotations

import sys

from prefect import task

from shrinkflow import export
from shrinkflow.artifacts import DataArtifact, ModelArtifact, OnnxArtifact
from shrinkflow.config import ConvertParams, Params, QuantizeStep
from shrinkflow.data import data_record
from shrinkflow.models import model_record
from shrinkflow.workspace import Workspace
from tasks._common import compute_slot, stage_main, step_options


@task(name="convert", **step_options("convert"))
def convert(model: ModelArtifact, params: ConvertParams, out_path: str,
            data: DataArtifact | None = None, quantize: QuantizeStep | None = None) -> OnnxArtifact:
    with compute_slot():
        return export.convert(model, params, out_path, data, quantize)


def _stage(p: Params, ws: Workspace) -> list[OnnxArtifact]:
    data = data_record(ws.data_dir)
    out = []
    for name in p.model_names:
        quantize = p.variants[name].onnx_quantize if name in p.variants else None
        out.append(export.convert(model_record(ws.checkpoint(name), name=name), p.convert,
                                  ws.onnx(name), data, quantize))
    return out


def main() -> int:
    return stage_main(_stage)


if __name__ == "__main__":
    sys.exit(main())
