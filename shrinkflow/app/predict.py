"""Run a registered (or local) model on an .npz of raw inputs, on its target's runtime
(ONNX Runtime, OpenVINO or LiteRT).

A registered version is checked before it serves: what MLflow hands back must have the
sha256 recorded at registration.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.files import atomic_path, file_sha256, path_sha256
from shrinkflow.data.validation import check_inputs, read_npz
from shrinkflow.ops.tracking import TAG, client
from shrinkflow.targets.base import SIDECAR


def _registered(model_uri: str) -> tuple[str, str, str, str] | None:
    """(target, artifact sha256, stored ONNX sha256, version label) of a models:/ URI."""
    if not model_uri.startswith("models:/"):
        return None
    import mlflow

    from shrinkflow.ops.registry import version_of

    mv = version_of(client(mlflow.get_tracking_uri()), model_uri)
    return (mv.tags.get(f"{TAG}target", "onnxruntime"), mv.tags.get(f"{TAG}artifact_sha256", ""),
            mv.tags.get(f"{TAG}mlflow_sha256", ""), f"{mv.name} v{mv.version}")


def fetch(model_uri: str, dst: Path) -> tuple[Path, str]:
    """A local copy of the model behind ``model_uri`` (a file or an artifact directory) and
    its target; a registered version's bytes are checked against its registration."""
    if Path(model_uri).exists():
        p = Path(model_uri)
        target = "onnxruntime" if p.suffix == ".onnx" or (p.is_dir() and list(p.glob("*.onnx"))) \
            else json.loads((p / SIDECAR).read_text())["target"] if (p / SIDECAR).is_file() \
            else "onnxruntime"
        return p, target
    if not model_uri.startswith(("models:/", "runs:/", "mlflow-artifacts:")):
        raise ShrinkflowError(f"{model_uri}: not a file, nor models:/NAME@ALIAS, "
                              "models:/NAME/VERSION or runs:/RUN/PATH")
    import mlflow

    registered = _registered(model_uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(dst)))
    except Exception as exc:
        raise ShrinkflowError(f"{model_uri}: cannot load ({type(exc).__name__}: "
                              f"{str(exc)[:200]}); see `shrinkflow models`") from None
    target = registered[0] if registered else "onnxruntime"
    if registered:
        _, artifact_sha, onnx_sha, label = registered
        if target == "onnxruntime":
            files = [local] if local.is_file() else sorted(local.rglob("*.onnx"))
            got, want = (file_sha256(files[0]) if files else ""), onnx_sha
        else:
            got, want = path_sha256(local), artifact_sha
        if want and got != want:
            raise ShrinkflowError(
                f"{model_uri}: the stored model (sha256 {got[:16]}…) is not the one registered "
                f"as {label} ({want[:16]}…); the artifact store was changed: run "
                "`shrinkflow audit --verify` and re-register")
    return local, target


def load_onnx(model_uri: str) -> bytes:
    """The ONNX bytes behind ``model_uri`` (verified when registered)."""
    with tempfile.TemporaryDirectory() as d:
        local, _ = fetch(model_uri, Path(d))
        files = [local] if local.is_file() else sorted(local.rglob("*.onnx"))
        if not files:
            raise ShrinkflowError(f"{model_uri}: no .onnx file in the logged model")
        return files[0].read_bytes()


def predict(model_uri: str, input_path: str | Path, out_path: str | Path | None = None,
            normalized: bool = False) -> dict[str, np.ndarray | list[str]]:
    """Predict classes for the raw images ``x`` in ``input_path`` (as the data set stores
    them; the model holds its own preprocessing), on the runtime of its target.
    ``normalized``: ``x`` was already normalised with the model's training statistics."""
    import onnx

    from shrinkflow.targets import base as targets
    from shrinkflow.targets.base import batched, model_file
    from shrinkflow.targets.onnxruntime import input_for, takes_raw_input

    with tempfile.TemporaryDirectory() as d:
        local, target = fetch(model_uri, Path(d))
        if target == "onnxruntime":
            try:
                proto = onnx.load(str(model_file(local, ".onnx")))
            except ShrinkflowError:
                raise
            except Exception:
                raise ShrinkflowError(f"{model_uri}: not an ONNX model") from None
            meta = {p.key: p.value for p in proto.metadata_props}
            dims = proto.graph.input[0].type.tensor_type.shape.dim
            want = [dim.dim_value for dim in dims[1:]]
            raw = takes_raw_input(meta)
            norm = json.loads(meta.get("shrinkflow.norm", "{}"))
            classes = json.loads(meta.get("shrinkflow.classes", "[]"))
            if meta.get("shrinkflow.task") == "embedding":
                return _embed(local, input_path, out_path)
        else:
            side = json.loads((local / SIDECAR).read_text())
            want, raw, norm, classes = side["input_shape"], True, side.get("norm", {}), \
                side.get("classes", [])
            meta = {}
        x = read_npz(input_path, ("x",))["x"]
        if x.ndim == len(want):  # (N, H, W) for one channel
            x = x[:, None]
        if list(x.shape[1:]) != list(want):
            raise ShrinkflowError(f"{input_path}: x has shape {x.shape}; the model takes "
                                  f"(N, {', '.join(map(str, want))})")
        check_inputs(x, str(input_path), ndims=(len(want) + 1,))
        x = x.astype(np.float32)
        if normalized and norm:
            if raw:  # undo it: the artifact normalises inside
                x = (x * np.float32(norm["std"]) + np.float32(norm["mean"])) * \
                    np.float32(norm["scale"])
        elif not normalized and target == "onnxruntime":
            x = input_for(meta, x)
        run = targets.get(target).load(str(local), 1)
        logits = batched(run, x)
    e = np.exp(logits - logits.max(1, keepdims=True))
    probs = e / e.sum(1, keepdims=True)
    pred = logits.argmax(1)
    result = {"pred": pred, "probs": probs.astype(np.float32),
              "labels": [classes[i] if i < len(classes) else str(i) for i in pred]}
    if out_path is not None:
        with atomic_path(out_path) as tmp, open(tmp, "wb") as f:
            np.savez(f, pred=pred, probs=result["probs"])
    return result


def _embed(local: Path, input_path: str | Path, out_path: str | Path | None,
           max_tokens: int = 128) -> dict[str, np.ndarray | list[str]]:
    """A sentence encoder: sentences (a text file, one per line) -> embeddings."""
    from shrinkflow.data.text import pretrained_dir, read_sentences, tokenize
    from shrinkflow.targets.base import batched
    from shrinkflow.targets.onnxruntime import OnnxRuntime

    sentences = read_sentences(input_path, minimum=1)
    x = tokenize(sentences, pretrained_dir(), max_tokens)
    emb = batched(OnnxRuntime.load(str(local), 1), x, batch=64)
    if out_path is not None:
        with atomic_path(out_path) as tmp, open(tmp, "wb") as f:
            np.savez(f, embeddings=emb)
    return {"embeddings": emb, "sentences": sentences}
