"""Step ``convert``: a trained checkpoint -> the deployable artifact of one target, with
the preprocessing (normalisation) inside, so every artifact takes raw inputs.

ONNX Runtime gets the ONNX export (dynamo; QDQ for quantization-aware models). The other
targets convert from what their module declares (``source``): OpenVINO from that ONNX
file, LiteRT from the torch model. Their artifacts are directories holding the model
file(s) and ``shrinkflow.json`` (name, classes, input shape, how it was made). A target
other than the default that cannot convert a model records the failure (the model is
rejected for that target with the reason) instead of failing the run.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from pydantic import Field

from shrinkflow.core.config import Int, Section
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.files import file_sha256, path_sha256
from shrinkflow.core.records import DataArtifact, ExportArtifact, ModelArtifact
from shrinkflow.models.checkpoint import load_checkpoint
from shrinkflow.models.preprocess import Deployed
from shrinkflow.models.qat import QATModel, to_float
from shrinkflow.steps.base import Context, step
from shrinkflow.steps.quantize import calibration_data
from shrinkflow.targets import base as targets
from shrinkflow.targets import onnxruntime as ort_target
from shrinkflow.targets.base import SIDECAR

log = logging.getLogger("shrinkflow")


class ConvertParams(Section):
    opset: Int = Field(18, ge=13, le=23)
    # dynamo: torch.export-based exporter (the maintained one); legacy: TorchScript tracing.
    exporter: Literal["dynamo", "legacy"] = "dynamo"


class ConvertStep(ConvertParams):
    """One model converted for one target."""

    target: str = "onnxruntime"
    # The runtime's int8 form (a quantized variant); calibrated where the target needs it.
    int8: bool = False
    calibration_size: Int = 512
    # The target's own options (its params in ``targets:``, threads excluded).
    options: dict[str, Any] = Field(default_factory=dict)


def artifact_metadata(name: str, ckpt: dict, source_sha256: str, quantization: str) -> dict:
    """What every exported artifact says about itself (ONNX metadata_props)."""
    return {"shrinkflow.variant": name, "shrinkflow.input": "raw",
            "shrinkflow.norm": json.dumps(ckpt.get("norm", {}), sort_keys=True),
            "shrinkflow.classes": json.dumps(ckpt.get("classes", [])),
            "shrinkflow.source_sha256": source_sha256,
            "shrinkflow.quantization": quantization,
            "shrinkflow.weight_bits": str((ckpt.get("qat") or {}).get("weight_bits", 0))}


@step("convert", ConvertStep, stage="convert")
def run(config: ConvertStep, ctx: Context, data: DataArtifact, model: ModelArtifact,
        export: ExportArtifact | None = None) -> ExportArtifact:
    """Convert the checkpoint (preprocessing inside) to the target's format; checked."""
    import torch

    torch.set_num_threads(ctx.threads)
    if data.task == "embedding":  # a sentence encoder
        from shrinkflow.steps import embed

        if config.target == "onnxruntime":
            return embed.convert(config, ctx, model, data)
        return embed.unsupported(config, ctx, model)
    if config.target == "onnxruntime":
        return _onnx(config, ctx, model)
    try:
        return _other(config, ctx, data, model, export)
    except Exception as exc:  # recorded as this model's rejection for this target
        reason = f"conversion to {config.target} failed: {str(exc).splitlines()[0][:300]}"
        log.warning("%s: %s", ctx.model, reason)
        return ExportArtifact(path="", sha256="", name=ctx.model, target=config.target,
                              format="failed", source_sha256=model.sha256,
                              exporter=config.target, config_hash=config.config_hash(),
                              failure=reason)


def _onnx(config: ConvertStep, ctx: Context, model: ModelArtifact) -> ExportArtifact:
    net, ckpt = load_checkpoint(model.path)
    qat = isinstance(net, QATModel)
    deployed = Deployed(net, ckpt["norm"]).eval()
    out = ctx.out_dir / "model.onnx"
    meta = artifact_metadata(ctx.model, ckpt, model.sha256, "qat" if qat else "none")
    ort_target.export_onnx(deployed, tuple(ckpt["input_shape"]), out, config.opset,
                           config.exporter, meta, qdq=qat)
    opset = ort_target.check_onnx(out)
    bits = int((ckpt.get("qat") or {}).get("weight_bits", 0))
    return ExportArtifact(path=str(out), sha256=file_sha256(out), name=ctx.model,
                          source_sha256=model.sha256, opset=opset,
                          exporter="legacy" if qat else config.exporter,
                          config_hash=config.config_hash(), quantization="qat" if qat else "none",
                          weight_bits=bits)


def _other(config: ConvertStep, ctx: Context, data: DataArtifact, model: ModelArtifact,
           export: ExportArtifact | None) -> ExportArtifact:
    target = targets.get(config.target)
    options = target.params.model_validate({"runtime": config.target, **config.options})
    net, ckpt = load_checkpoint(model.path)
    shape = tuple(ckpt["input_shape"])
    kwargs: dict[str, Any] = {"input_shape": shape, "int8": config.int8, "options": options}
    if target.source == "onnx":
        if export is None or export.format != "onnx":
            raise ShrinkflowError(f"{config.target} converts from the model's ONNX file")
        kwargs["onnx_path"] = export.path
        quantization = export.quantization
    else:
        # A quantization-aware model is handed over as its float network: the runtime's
        # own quantizer makes the int8 form.
        kwargs["module"] = Deployed(to_float(net), ckpt["norm"]).eval()
        quantization = "static" if config.int8 else "none"
    if config.int8:
        kwargs["calibration"], fingerprint = calibration_data(data, config.calibration_size)
    else:
        fingerprint = ""
    out = target.convert(ctx.out_dir, **kwargs)
    sidecar = {"name": ctx.model, "target": config.target, "format": target.format,
               "input": "raw", "input_shape": list(shape), "classes": ckpt.get("classes", []),
               "norm": ckpt.get("norm", {}), "source_sha256": model.sha256,
               "quantization": quantization, "calibration_fingerprint": fingerprint,
               "versions": target.versions()}
    (out / SIDECAR).write_text(json.dumps(sidecar, indent=1, sort_keys=True) + "\n")
    return ExportArtifact(path=str(out), sha256=path_sha256(out), name=ctx.model,
                          target=config.target, format=target.format,
                          source_sha256=export.sha256 if export is not None else model.sha256,
                          exporter=config.target, config_hash=config.config_hash(),
                          quantization=quantization, calibration_fingerprint=fingerprint)
