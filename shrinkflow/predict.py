"""Run a registered (or local) ONNX model on an .npz of raw inputs with ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from shrinkflow.artifacts import atomic_path
from shrinkflow.errors import ShrinkflowError


def load_onnx_bytes(model_uri: str) -> bytes:
    """``models:/name@alias``, ``models:/name/version``, ``runs:/...`` (the MLflow ONNX
    flavor) or a local ``.onnx`` file."""
    if Path(model_uri).is_file():
        return Path(model_uri).read_bytes()
    if not model_uri.startswith(("models:/", "runs:/", "mlflow-artifacts:")):
        raise ShrinkflowError(f"{model_uri}: not a file, nor models:/NAME@ALIAS, "
                              "models:/NAME/VERSION or runs:/RUN/PATH")
    import mlflow.onnx

    try:
        return mlflow.onnx.load_model(model_uri).SerializeToString()
    except Exception as exc:
        raise ShrinkflowError(f"{model_uri}: cannot load ({type(exc).__name__}: "
                              f"{str(exc)[:200]}); see `shrinkflow models`") from None


def predict(model_uri: str, input_path: str | Path, out_path: str | Path | None = None,
            normalized: bool = False) -> dict[str, np.ndarray | list[str]]:
    """Predict classes for ``x`` in ``input_path`` (raw images, as the data set stores
    them: normalised here with the statistics stored in the model, unless ``normalized``)."""
    import onnxruntime as ort

    import onnx

    blob = load_onnx_bytes(model_uri)
    proto = onnx.load_from_string(blob)
    meta = {p.key: p.value for p in proto.metadata_props}
    try:
        with np.load(input_path, allow_pickle=False) as f:
            x = f["x"]
    except (OSError, ValueError, KeyError) as exc:
        raise ShrinkflowError(f"{input_path}: needs an .npz with an array x "
                              f"({type(exc).__name__}: {exc})") from None
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    want = [d.dim_value for d in dims[1:]]
    if x.ndim == len(want):  # (N, H, W) for one channel
        x = x[:, None]
    if list(x.shape[1:]) != want:
        raise ShrinkflowError(f"{input_path}: x has shape {x.shape}; the model takes "
                              f"(N, {', '.join(map(str, want))})")
    x = x.astype(np.float32)
    if not normalized and "shrinkflow.norm" in meta:
        norm = json.loads(meta["shrinkflow.norm"])
        x = (x / np.float32(norm["scale"]) - np.float32(norm["mean"])) / np.float32(norm["std"])
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    logits = np.concatenate([sess.run(None, {name: x[i:i + 1024]})[0]
                             for i in range(0, len(x), 1024)])
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
