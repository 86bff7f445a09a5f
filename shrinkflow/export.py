"""Convert a checkpoint to ONNX: one self-contained file, dynamic batch axis, fully checked."""

from __future__ import annotations

import contextlib
import io
import logging
import threading
from pathlib import Path

import torch

from shrinkflow.artifacts import (
    DataArtifact,
    ModelArtifact,
    OnnxArtifact,
    atomic_path,
    file_sha256,
)
from shrinkflow.config import ConvertParams, QuantizeStep
from shrinkflow.errors import ShrinkflowError

# torch.export keeps tracing state in globals: concurrent exports from Prefect's thread
# pool corrupt each other ("ProxyTorchDispatchMode slot already occupied"). Exports are
# seconds long; they run one at a time.
_EXPORT_LOCK = threading.Lock()

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def export_onnx(model: torch.nn.Module, input_shape: tuple[int, ...], path: str | Path,
                params: ConvertParams, metadata: dict[str, str] | None = None) -> None:
    """Export ``model`` (eval mode) to ``path`` atomically and run onnx's full checker.

    A quantization-aware model is exported with the TorchScript exporter, which turns
    fake-quant into QuantizeLinear/DequantizeLinear pairs (QDQ); its weights are then
    stored as int8.
    """
    import onnx
    from shrinkflow.compress.quantize import QATModel, fold_weight_quantization

    is_qat = isinstance(model, QATModel)
    if is_qat:
        params = params.model_copy(update={"exporter": "legacy"})
    model.eval()
    example = torch.zeros((2, *input_shape), dtype=torch.float32)
    with atomic_path(path) as tmp:
        try:
            # The exporter prints progress and registry warnings; keep the console clean.
            with _EXPORT_LOCK, contextlib.redirect_stdout(io.StringIO()), _quiet("torch"):
                if params.exporter == "dynamo":
                    kwargs = {"dynamo": True, "external_data": False,  # one file, no .data
                              "dynamic_shapes": ({0: torch.export.Dim("batch", min=1)},)}
                else:
                    kwargs = {"dynamo": False, "dynamic_axes": {INPUT_NAME: {0: "batch"},
                                                                 OUTPUT_NAME: {0: "batch"}}}
                torch.onnx.export(model, (example,), str(tmp), input_names=[INPUT_NAME],
                                  output_names=[OUTPUT_NAME], opset_version=params.opset,
                                  **kwargs)
        except Exception as exc:
            raise ShrinkflowError(f"convert: torch.onnx.export ({params.exporter}) failed: "
                                  f"{exc}; try convert.exporter: legacy") from None
        proto = onnx.load(str(tmp))
        _strip_debug_info(proto)
        for key, value in (metadata or {}).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(tmp))
        if is_qat:
            fold_weight_quantization(tmp)
        compact_names(tmp)
        check_onnx(tmp)


def _strip_debug_info(proto) -> None:
    """Drop the exporter's per-node stack traces and FX dumps: they embed source paths,
    which would make the same model's bytes differ between checkouts (and DVC hashes
    with them), and they bloat the file."""
    for node in proto.graph.node:
        node.doc_string = ""
        del node.metadata_props[:]
    del proto.graph.metadata_props[:]
    proto.graph.doc_string = ""


def compact_names(path: str | Path) -> None:
    """Rename nodes, initializers and intermediate tensors to short ids (graph inputs
    and outputs keep their names). Exporters write long scoped names; on a small int8
    model they are a fifth of the file."""
    import onnx

    proto = onnx.load(str(path))
    g = proto.graph
    keep = {v.name for v in g.input} | {v.name for v in g.output}
    mapping: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in mapping:
            mapping[name] = f"t{len(mapping):x}"
        return mapping[name]

    for init in g.initializer:
        init.name = short(init.name)
    for node in g.node:
        node.name = ""
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    for vi in g.value_info:
        vi.name = short(vi.name)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))


def check_onnx(path: str | Path) -> int:
    """Run onnx's full checker (with shape inference); return the model's opset."""
    import onnx

    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ShrinkflowError(f"{path}: invalid ONNX model ({exc})") from None
    return opset_of(proto)


def opset_of(proto) -> int:
    return max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
               default=0)


def convert(model_artifact: ModelArtifact, params: ConvertParams, out_path: str | Path,
            data: DataArtifact | None = None, quantize: QuantizeStep | None = None
            ) -> OnnxArtifact:
    """Export a checkpoint to ``out_path``; with ``quantize`` (ONNX Runtime dynamic or
    static), export to a float file first and quantize that, calibrating static
    quantization on a stratified subset of the validation split."""
    import json

    from shrinkflow.compress.quantize import calibration_subset, quantize_onnx
    from shrinkflow.data import load_prepared
    from shrinkflow.models import load_checkpoint

    model, ckpt = load_checkpoint(model_artifact.path)
    meta = {"shrinkflow.variant": model_artifact.name,
            "shrinkflow.norm": json.dumps(ckpt.get("norm", {}), sort_keys=True),
            "shrinkflow.classes": json.dumps(ckpt.get("classes", [])),
            "shrinkflow.source_sha256": model_artifact.sha256}
    shape = tuple(ckpt["input_shape"])
    if quantize is None:
        meta["shrinkflow.quantization"] = "qat" if ckpt.get("qat") else "none"
        export_onnx(model, shape, out_path, params, meta)
        return onnx_record(out_path, model_artifact.sha256, params, model_artifact.name)
    out_path = Path(out_path)
    float_path = out_path.with_name(f".{out_path.stem}.float.onnx")
    try:
        export_onnx(model, shape, float_path, params, meta)
        calib, fingerprint = None, ""
        if quantize.method == "static":
            if data is None:
                raise ShrinkflowError("convert: static quantization needs the prepared data")
            splits = load_prepared(data.path)
            calib, fingerprint = calibration_subset(splits.x_val, splits.y_val,
                                                    quantize.calibration_size)
        quantize_onnx(float_path, out_path, quantize, calib)
    finally:
        float_path.unlink(missing_ok=True)
    _set_metadata(out_path, {**meta, "shrinkflow.quantization": quantize.method,
                             "shrinkflow.calibration_fingerprint": fingerprint})
    compact_names(out_path)
    check_onnx(out_path)
    return onnx_record(out_path, model_artifact.sha256, params, model_artifact.name)


def _set_metadata(path: Path, meta: dict[str, str]) -> None:
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))


@contextlib.contextmanager
def _quiet(logger_name: str):
    logger = logging.getLogger(logger_name)
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


def onnx_record(path: str | Path, source_sha256: str, params: ConvertParams,
                name: str | None = None) -> OnnxArtifact:
    """The record of an ONNX file on disk (variant name and quantization are in the
    file's metadata)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    return OnnxArtifact(
        path=str(Path(path).resolve()), sha256=file_sha256(path),
        name=name or props.get("shrinkflow.variant", Path(path).stem),
        source_sha256=source_sha256, opset=opset_of(proto), exporter=params.exporter,
        config_hash=params.config_hash(),
        quantization=props.get("shrinkflow.quantization", "none"),
        calibration_fingerprint=props.get("shrinkflow.calibration_fingerprint", ""),
    )
