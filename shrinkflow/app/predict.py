"""Run a registered (or local) ONNX model on an .npz of raw inputs with ONNX Runtime.

A registered version is checked before it serves: the file MLflow hands back must have
the sha256 recorded at registration.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.files import atomic_path, file_sha256
from shrinkflow.data.validation import check_inputs, read_npz
from shrinkflow.ops.tracking import TAG, client


def _registered_sha(model_uri: str) -> tuple[str, str] | None:
    """(stored sha256 recorded at registration, version label) of a models:/ URI."""
    if not model_uri.startswith("models:/"):
        return None
    ref = model_uri[len("models:/"):]
    c = client(__import__("mlflow").get_tracking_uri())
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            mv = c.get_model_version_by_alias(name, alias)
        else:
            name, version = ref.rsplit("/", 1)
            mv = c.get_model_version(name, version)
    except Exception:
        raise ShrinkflowError(f"{model_uri}: no such registered version (see `shrinkflow "
                              "models`)") from None
    sha = mv.tags.get(f"{TAG}mlflow_sha256")
    return (sha, f"{mv.name} v{mv.version}") if sha else None


def load_onnx(model_uri: str) -> bytes:
    """``models:/name@alias``, ``models:/name/version``, ``runs:/...`` (the MLflow ONNX
    flavor) or a local ``.onnx`` file; a registered version's bytes are verified."""
    if Path(model_uri).is_file():
        return Path(model_uri).read_bytes()
    if not model_uri.startswith(("models:/", "runs:/", "mlflow-artifacts:")):
        raise ShrinkflowError(f"{model_uri}: not a file, nor models:/NAME@ALIAS, "
                              "models:/NAME/VERSION or runs:/RUN/PATH")
    import mlflow

    expected = _registered_sha(model_uri)
    with tempfile.TemporaryDirectory() as d:
        try:
            local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=d))
        except Exception as exc:
            raise ShrinkflowError(f"{model_uri}: cannot load ({type(exc).__name__}: "
                                  f"{str(exc)[:200]}); see `shrinkflow models`") from None
        files = [local] if local.is_file() else sorted(local.rglob("*.onnx"))
        if not files:
            raise ShrinkflowError(f"{model_uri}: no .onnx file in the logged model")
        if expected and file_sha256(files[0]) != expected[0]:
            raise ShrinkflowError(
                f"{model_uri}: the stored ONNX file (sha256 {file_sha256(files[0])[:16]}…) is "
                f"not the one registered as {expected[1]} ({expected[0][:16]}…); the artifact "
                "store was changed: run `shrinkflow audit --verify` and re-register")
        return files[0].read_bytes()


def predict(model_uri: str, input_path: str | Path, out_path: str | Path | None = None,
            normalized: bool = False) -> dict[str, np.ndarray | list[str]]:
    """Predict classes for the raw images ``x`` in ``input_path`` (as the data set stores
    them; the model holds its own preprocessing). ``normalized``: ``x`` was already
    normalised with the model's training statistics."""
    import onnx

    from shrinkflow.targets.base import batched
    from shrinkflow.targets.onnxruntime import input_for, ort_session, takes_raw_input

    blob = load_onnx(model_uri)
    try:
        proto = onnx.load_from_string(blob)
    except Exception:
        raise ShrinkflowError(f"{model_uri}: not an ONNX model") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    x = read_npz(input_path, ("x",))["x"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    want = [d.dim_value for d in dims[1:]]
    if x.ndim == len(want):  # (N, H, W) for one channel
        x = x[:, None]
    if list(x.shape[1:]) != want:
        raise ShrinkflowError(f"{input_path}: x has shape {x.shape}; the model takes "
                              f"(N, {', '.join(map(str, want))})")
    check_inputs(x, str(input_path), ndims=(4,))
    x = x.astype(np.float32)
    if normalized and "shrinkflow.norm" in meta:
        norm = json.loads(meta["shrinkflow.norm"])
        if takes_raw_input(meta):  # undo it: the artifact normalises inside
            x = (x * np.float32(norm["std"]) + np.float32(norm["mean"])) * np.float32(norm["scale"])
    elif not normalized:
        x = input_for(meta, x)
    sess = ort_session(blob, 1)
    name = sess.get_inputs()[0].name
    logits = batched(lambda xb: sess.run(None, {name: xb})[0], x)
    e = np.exp(logits - logits.max(1, keepdims=True))
    probs = e / e.sum(1, keepdims=True)
    classes = json.loads(meta.get("shrinkflow.classes", "[]"))
    pred = logits.argmax(1)
    result = {"pred": pred, "probs": probs.astype(np.float32),
              "labels": [classes[i] if i < len(classes) else str(i) for i in pred]}
    if out_path is not None:
        with atomic_path(out_path) as tmp, open(tmp, "wb") as f:
            np.savez(f, pred=pred, probs=result["probs"])
    return result
