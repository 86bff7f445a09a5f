"""Lineage: the derivation record of every model (``lineage.json``), and the audit over it:
print the chain, verify every hash, answer reverse queries.

``lineage.json`` (format ``shrinkflow.lineage/1``), logged to each model's MLflow run:

    model:        name, quantization, calibration_fingerprint,
                  onnx {sha256, artifact}, checkpoint {sha256, artifact}
    chain:        [{step, config, config_hash, checkpoint_sha256 | onnx_sha256, seconds}]
                  from the teacher's training to this model's conversion
    parent:       {name, run_id} (null for the teacher)
    data:         dataset, fingerprint (sha256 of the arrays), source_fingerprint,
                  split_seed, counts, dvc {path, md5, nfiles} (null when not recorded)
    code:         git_commit, git_dirty, code_hash
    environment:  python and key package versions, lock_hash
    params_hash, pipeline_run_id, created
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from shrinkflow.artifacts import DataArtifact, ModelArtifact, OnnxArtifact

FORMAT = "shrinkflow.lineage/1"
ARTIFACT = "lineage.json"


def step_entry(step: str, config: dict[str, Any], config_hash: str, seconds: float | None,
               **hashes: str) -> dict[str, Any]:
    return {"step": step, "config": config, "config_hash": config_hash,
            "seconds": seconds, **hashes}


def model_entry(model: ModelArtifact, step: str, config: dict[str, Any],
                config_hash: str) -> dict[str, Any]:
    """The chain entry of a step that wrote a checkpoint."""
    seconds = model.summary.get("step_seconds", model.summary.get("fit_seconds"))
    return step_entry(step, config, config_hash, seconds, checkpoint_sha256=model.sha256)


def build(name: str, chain: list[dict[str, Any]], model: ModelArtifact, onnx: OnnxArtifact,
          data: DataArtifact, data_meta: dict[str, Any], parent: dict[str, str] | None,
          dvc_data: dict[str, Any] | None, code: dict[str, str], environment: dict[str, str],
          params_hash: str, pipeline_run_id: str, source_fingerprint: str) -> dict[str, Any]:
    """The lineage record of one model (see the module docstring for the format)."""
    return {
        "format": FORMAT,
        "model": {"name": name, "quantization": onnx.quantization,
                  "calibration_fingerprint": onnx.calibration_fingerprint or None,
                  "onnx": {"sha256": onnx.sha256, "artifact": f"{name}/model.onnx"},
                  "checkpoint": {"sha256": model.sha256,
                                 "artifact": f"checkpoint/{name}.pt"}},
        "chain": chain,
        "parent": parent,
        "data": {"dataset": data.dataset, "fingerprint": data.fingerprint,
                 "source_fingerprint": source_fingerprint, "split_seed": data.split_seed,
                 "counts": {"train": data.n_train, "val": data.n_val, "test": data.n_test},
                 "source": data_meta.get("source"), "dvc": dvc_data},
        "code": code,
        "environment": environment,
        "params_hash": params_hash,
        "pipeline_run_id": pipeline_run_id,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, indent=2, sort_keys=True) + "\n"
