"""Step ``validate``: accuracy, parity, latency and size of every converted model."""

from __future__ import annotations

import sys

from prefect import task

from shrinkflow import validate as lib
from shrinkflow.artifacts import DataArtifact, Metrics, ModelArtifact, OnnxArtifact
from shrinkflow.config import Params, ValidateParams
from shrinkflow.data import data_record
from shrinkflow.errors import GateFailure
from shrinkflow.export import onnx_record
from shrinkflow.models import model_record
from shrinkflow.workspace import Workspace
from tasks._common import stage_main, step_options


@task(name="validate", **step_options("validate"))
def validate(model: ModelArtifact, onnx: OnnxArtifact, data: DataArtifact,
             params: ValidateParams, teacher: dict[str, float] | None = None) -> Metrics:
    return lib.validate(model, onnx, data, params, teacher)


@task(name="write-metrics")
def write_metrics(results: list[Metrics], out_path: str) -> None:
    lib.write_metrics(lib.metrics_document(results), out_path)


def _stage(p: Params, ws: Workspace) -> dict:
    pairs = []
    for name in p.model_names:
        model = model_record(ws.checkpoint(name), name=name)
        pairs.append((model, onnx_record(ws.onnx(name), model.sha256, p.convert, name)))
    results = lib.validate_all(pairs, data_record(ws.data_dir), p.validate_, ws.validate_metrics)
    failures = [f"{m.name}: {f}" for m in results for f in m.gate_failures]
    if failures:
        raise GateFailure(failures)
    return lib.metrics_document(results)


def main() -> int:
    return stage_main(_stage)


if __name__ == "__main__":
    sys.exit(main())
