"""Lineage: the typed derivation record of every model (``lineage.json``).

Format ``shrinkflow.lineage/2``, logged to each model's MLflow run; records written as
``shrinkflow.lineage/1`` (before steps ran in worker processes) read into the same
types, with the fields they lack left empty.

    model:        name, quantization, weight_bits, calibration_fingerprint,
                  onnx {sha256, artifact, mlflow_uri, mlflow_location, mlflow_sha256},
                  checkpoint {sha256, artifact}, exports [{target, format, sha256, ...}]
    chain:        every step from the teacher's training to this model's conversion:
                  step, config, config_hash, key, seconds, output hashes, worker, machine
    parent:       {name, run_id} of the model it was derived from (null for the teacher)
    data:         dataset, fingerprint, source_fingerprint, split_seed, counts, DVC entry
    code:         git commit, dirty flag, source hash
    environment:  Python and key package versions, lock hash
    machine:      where the steps ran: CPU model, ISA features, versions, threads
    params_hash, pipeline_run_id, run_id, created
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

FORMAT = "shrinkflow.lineage/2"
READABLE = ("shrinkflow.lineage/1", FORMAT)
ARTIFACT = "lineage.json"


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class OnnxRef(_Model):
    sha256: str
    artifact: str = ""
    mlflow_uri: str | None = None
    mlflow_location: str | None = None
    mlflow_sha256: str | None = None


class FileRef(_Model):
    sha256: str
    artifact: str = ""


class ExportRef(_Model):
    target: str
    format: str
    sha256: str
    artifact: str = ""
    runtime: dict[str, str] = Field(default_factory=dict)


class ModelInfo(_Model):
    name: str
    quantization: str = "none"
    weight_bits: int = 0
    calibration_fingerprint: str | None = None
    onnx: OnnxRef
    checkpoint: FileRef
    exports: list[ExportRef] = Field(default_factory=list)


class ChainStep(_Model):
    step: str
    config: dict[str, Any] = Field(default_factory=dict)
    config_hash: str = ""
    key: str = ""  # the step's content key in the step store
    seconds: float | None = None
    checkpoint_sha256: str | None = None
    onnx_sha256: str | None = None
    calibration_fingerprint: str | None = None
    opset: int | None = None
    worker: str = ""
    machine_id: str = ""
    threads: int | None = None

    @property
    def output_hash(self) -> str:
        return self.checkpoint_sha256 or self.onnx_sha256 or self.calibration_fingerprint or ""


class ParentRef(_Model):
    name: str
    run_id: str


class DvcEntry(_Model):
    path: str
    md5: str
    size: int | None = None
    nfiles: int | None = None


class DataInfo(_Model):
    dataset: str
    fingerprint: str
    source_fingerprint: str | None = None
    split_seed: int = 0
    counts: dict[str, int] = Field(default_factory=dict)
    source: str | None = None
    dvc: DvcEntry | None = None


class CodeInfo(_Model):
    git_commit: str
    git_dirty: str
    code_hash: str = ""


class Lineage(_Model):
    format: str = FORMAT
    model: ModelInfo
    chain: list[ChainStep]
    parent: ParentRef | None = None
    data: DataInfo
    code: CodeInfo
    environment: dict[str, str] = Field(default_factory=dict)
    machine: dict[str, Any] = Field(default_factory=dict)
    params_hash: str = ""
    pipeline_run_id: str = ""
    run_id: str = ""
    created: str = ""
    metrics: dict[str, float] = Field(default_factory=dict)  # filled by audit, not stored

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", exclude={"metrics"}, exclude_none=False),
                          indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Lineage:
        """Read format /1 or /2."""
        raw = json.loads(text)
        fmt = raw.get("format")
        if fmt not in READABLE:
            raise ValueError(f"unknown lineage format {fmt!r} (readable: {', '.join(READABLE)})")
        return cls.model_validate(raw)
