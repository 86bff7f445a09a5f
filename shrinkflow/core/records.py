"""Frozen records passed between steps: paths and content hashes, never live objects.

A record is what a step returns and what the next step, the step store, the MLflow
tags and the lineage consume; :meth:`Artifact.is_intact` lets a caller check that the
file a cached record points at is still the file that was produced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from shrinkflow.core.files import dir_sha256, file_sha256


class Artifact(BaseModel):
    """A file (or directory) a step wrote, with its content hash."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    sha256: str

    def is_intact(self) -> bool:
        """True when the path exists and still has the recorded hash."""
        p = Path(self.path)
        if p.is_dir():
            return dir_sha256(p) == self.sha256
        return p.is_file() and file_sha256(p) == self.sha256


class DataArtifact(Artifact):
    """The prepared splits (a directory of .npy files plus meta.json)."""

    dataset: str
    fingerprint: str  # sha256 over the arrays' contents, independent of file format
    input_shape: tuple[int, ...]
    num_classes: int
    n_train: int
    n_val: int
    n_test: int
    split_seed: int
    mean: float
    std: float
    task: str = "classification"  # or "embedding" (x: packed tokens; quality: cosine)


class ModelArtifact(Artifact):
    """A torch checkpoint (``weights_only``-loadable dict)."""

    name: str  # the model name: "teacher", "p80_ft", ... (or the step kind for a chain link)
    step: str  # the step that made it: train, prune, finetune, distill, quantize
    config_hash: str
    parent: str | None = None  # the model it was derived from
    data_fingerprint: str
    num_params: int
    nonzero_params: int
    # How the step went (epochs run, best validation accuracy, seconds, ...).
    summary: dict[str, float] = {}
    # Per-epoch curves (train_loss, val_accuracy) of a step that trained.
    history: list[dict[str, float | str]] = []


class ExportArtifact(Artifact):
    """A deployable model for one target runtime: an ONNX file, an OpenVINO IR
    directory (model.xml + model.bin) or a LiteRT flatbuffer."""

    name: str
    target: str = "onnxruntime"
    format: str = "onnx"  # onnx | openvino-ir | tflite
    source_sha256: str  # the checkpoint (or float export) it came from
    opset: int = 0
    exporter: str
    config_hash: str
    quantization: str = "none"  # none | dynamic | static | qat
    calibration_fingerprint: str = ""  # sha256 of the static-calibration subset
    weight_bits: int = 0  # int8 weights: 7 (AVX2 saturation workaround) or 8; 0 for float
    failure: str = ""  # format "failed": why this target could not convert the model

    def is_intact(self) -> bool:
        return self.format == "failed" or super().is_intact()


class LatencyArtifact(Artifact):
    """Latency samples of every model of one target, measured interleaved in rounds
    (a JSON file: samples per model, batch and round, plus the machine)."""

    target: str
    models: list[str]
    machine: dict[str, Any]


class Metrics(BaseModel):
    """Validation results of one model on one target, with the parity-gate verdict."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    values: dict[str, float]
    gate_failures: tuple[str, ...] = ()
    target: str = "onnxruntime"
    path: str | None = None

    @property
    def passed(self) -> bool:
        return not self.gate_failures


RECORD_TYPES: dict[str, type[BaseModel]] = {
    cls.__name__: cls for cls in (DataArtifact, ModelArtifact, ExportArtifact,
                                  LatencyArtifact, Metrics)
}
