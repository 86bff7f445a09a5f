"""MLflow: the pipeline's parent run, one nested run per model variant, logged models.

Runs are addressed by id through ``MlflowClient`` (never the implicit "active run"),
so tasks may log from any thread; the only active-run use is ``log_model``, which MLflow
offers no other way, and it is scoped to one ``with`` block.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from shrinkflow.artifacts import DataArtifact, Metrics, ModelArtifact, OnnxArtifact
from shrinkflow.errors import ShrinkflowError

TAG = "shrinkflow."  # prefix of every tag this project writes


class RunRef(BaseModel):
    """How to reach an MLflow run from any process."""

    model_config = ConfigDict(frozen=True)

    tracking_uri: str
    experiment_id: str
    run_id: str


def resolve_tracking_uri(uri: str, root: str | Path) -> str:
    """Make a relative ``sqlite:///file.db`` relative to the workspace, refuse file stores."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str((Path(root) / uri[len("sqlite:///"):]).resolve())
    if "://" not in uri or uri.startswith("file:"):
        raise ShrinkflowError(
            f"base.tracking_uri {uri!r}: MLflow's file store is not supported; use "
            "sqlite:///mlflow.db (embedded) or http(s)://host:port (an MLflow server)")
    return uri


def client(uri: str):
    """An MlflowClient for ``uri``; also sets the process-wide URI for ``log_model``."""
    import logging

    import mlflow
    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.ERROR)  # MLflow resets it on import
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


def _call(uri: str, what: str, fn, *args, **kwargs):
    """Run an MLflow call; turn connection problems into one actionable error."""
    try:
        return fn(*args, **kwargs)
    except ShrinkflowError:
        raise
    except Exception as exc:
        name = type(exc).__name__
        if any(k in name for k in ("Connection", "MaxRetry", "Timeout")) or \
                "Connection refused" in str(exc) or "API request" in str(exc):
            raise ShrinkflowError(
                f"MLflow at {uri}: cannot {what} ({name}); is the server running? Start it "
                "or set base.tracking_uri / MLFLOW_TRACKING_URI") from None
        raise


def ensure_experiment(c, name: str, artifact_location: str | None) -> str:
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    return c.create_experiment(name, artifact_location=artifact_location)


def flat_params(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested params to dotted keys (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_params(value, name + "."))
        else:
            out[name] = json.dumps(value) if isinstance(value, list | tuple) else str(value)
    return out


def _log_params(c, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v[:6000]) for k, v in flat_params(params).items()]
    for i in range(0, len(items), 100):
        c.log_batch(run_id, params=items[i:i + 100])


def start_pipeline_run(uri: str, experiment: str, artifact_location: str | None,
                       params: dict[str, Any], tags: dict[str, str]) -> RunRef:
    """Create the parent run of one pipeline execution (left RUNNING until :func:`end_run`)."""
    c = client(uri)
    exp_id = _call(uri, "create the experiment", ensure_experiment, c, experiment,
                   artifact_location)
    run = _call(uri, "create a run", c.create_run, exp_id,
                run_name=f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}",
                tags={f"{TAG}step": "pipeline", **tags})
    _log_params(c, run.info.run_id, params)
    return RunRef(tracking_uri=uri, experiment_id=exp_id, run_id=run.info.run_id)


def set_tags(ref: RunRef, tags: dict[str, str]) -> None:
    c = client(ref.tracking_uri)
    for key, value in tags.items():
        c.set_tag(ref.run_id, key, value)


def log_artifact(ref: RunRef, path: str | Path, artifact_path: str | None = None) -> None:
    client(ref.tracking_uri).log_artifact(ref.run_id, str(path), artifact_path=artifact_path)


def log_text(ref: RunRef, text: str, name: str) -> None:
    client(ref.tracking_uri).log_text(ref.run_id, text, name)


def end_run(ref: RunRef, status: str = "FINISHED", error: str | None = None) -> None:
    """Terminate a run (FINISHED / FAILED / KILLED), recording why it failed."""
    c = client(ref.tracking_uri)
    if error:
        c.set_tag(ref.run_id, f"{TAG}error", error[:4000])
    c.set_terminated(ref.run_id, status=status)


def _dataset(data: DataArtifact):
    """An MLflow dataset entity for the prepared test split, digest = data fingerprint."""
    import mlflow

    from shrinkflow.data import load_prepared

    splits = load_prepared(data.path)
    with warnings.catch_warnings():  # MLflow registers two equivalent local-path sources
        warnings.simplefilter("ignore", UserWarning)
        return mlflow.data.from_numpy(splits.x_test, targets=splits.y_test, source=data.path,
                                      name=f"{data.dataset}-{data.fingerprint[:8]}",
                                      digest=data.fingerprint[:16])


def log_model_run(parent: RunRef, model: ModelArtifact, onnx_art: OnnxArtifact,
                  metrics: Metrics, data: DataArtifact, step_params: dict[str, Any],
                  tags: dict[str, str], lineage: dict[str, Any] | None = None) -> dict[str, str]:
    """One nested run for a model variant: params, metrics, ONNX model, checkpoint, dataset,
    and its ``lineage.json`` (completed with where MLflow stored the model).

    Returns ids a caller (and the registry) needs: run_id, model_id, model_uri.
    """
    import mlflow

    import onnx

    c = client(parent.tracking_uri)
    run_tags = {
        "mlflow.parentRunId": parent.run_id,
        f"{TAG}step": model.step,
        f"{TAG}variant": model.name,
        f"{TAG}parent_variant": model.parent or "",
        f"{TAG}config_hash": model.config_hash,
        f"{TAG}data_fingerprint": data.fingerprint,
        f"{TAG}checkpoint_sha256": model.sha256,
        f"{TAG}onnx_sha256": onnx_art.sha256,
        f"{TAG}opset": str(onnx_art.opset),
        f"{TAG}parity_failures": "; ".join(metrics.gate_failures),
        **tags,
    }
    run = _call(parent.tracking_uri, "create a run", c.create_run, parent.experiment_id,
                run_name=model.name, tags=run_tags)
    run_id = run.info.run_id
    _log_params(c, run_id, step_params)
    proto = onnx.load(onnx_art.path)
    splits_x = _dataset(data)
    example = np.asarray(splits_x.features[:2])
    with mlflow.start_run(run_id=run_id):
        signature = mlflow.models.infer_signature(example, _logits_like(example, proto))
        info = mlflow.onnx.log_model(
            proto, name=model.name, signature=signature, save_as_external_data=False,
            pip_requirements=_pip_requirements(), metadata={"shrinkflow_variant": model.name},
            tags={f"{TAG}onnx_sha256": onnx_art.sha256},
        )
        mlflow.log_metrics({k: float(v) for k, v in {**metrics.values, **model.summary}.items()},
                           model_id=info.model_id)
        mlflow.log_input(splits_x, context="test")
        c.log_artifact(run_id, model.path, artifact_path="checkpoint")
        if lineage is not None:
            from shrinkflow.lineage import ARTIFACT, dumps

            location = f"{mlflow.get_logged_model(info.model_id).artifact_location}/model.onnx"
            lineage["model"]["onnx"].update(mlflow_uri=info.model_uri, mlflow_location=location,
                                            mlflow_sha256=_stored_sha256(location))
            lineage["run_id"] = run_id
            mlflow.log_text(dumps(lineage), ARTIFACT)
    return {"run_id": run_id, "model_id": info.model_id, "model_uri": info.model_uri,
            "onnx_sha256": onnx_art.sha256}


def _stored_sha256(artifact_uri: str) -> str:
    """sha256 of a file as MLflow stored it (the ONNX flavor re-serialises the model)."""
    import tempfile

    import mlflow

    from shrinkflow.artifacts import file_sha256

    with tempfile.TemporaryDirectory() as d:
        return file_sha256(mlflow.artifacts.download_artifacts(artifact_uri, dst_path=d))


def _logits_like(example: np.ndarray, proto) -> np.ndarray:
    """A zero output of the right shape and dtype, for the signature only."""
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    return np.zeros((len(example), dims[-1].dim_value), dtype=np.float32)


def _pip_requirements() -> list[str]:
    # Given explicitly: inferring them costs seconds per logged model.
    from importlib import metadata

    return [f"{p}=={metadata.version(p)}" for p in ("onnx", "onnxruntime", "numpy")]
