"""Step ``convert``: a trained checkpoint -> the deployable artifact of a target, with
the preprocessing (normalisation) inside, so the artifact takes raw inputs."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import Field

from shrinkflow.core.config import Int, Section
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.files import file_sha256
from shrinkflow.core.records import DataArtifact, ExportArtifact, ModelArtifact
from shrinkflow.models.checkpoint import load_checkpoint
from shrinkflow.models.preprocess import Deployed
from shrinkflow.models.qat import QATModel
from shrinkflow.steps.base import Context, step
from shrinkflow.targets import onnxruntime as ort_target


class ConvertParams(Section):
    opset: Int = Field(18, ge=13, le=23)
    # dynamo: torch.export-based exporter (the maintained one); legacy: TorchScript tracing.
    exporter: Literal["dynamo", "legacy"] = "dynamo"


class ConvertStep(ConvertParams):
    """One model converted for one target."""

    target: str = "onnxruntime"


def artifact_metadata(name: str, ckpt: dict, source_sha256: str, quantization: str) -> dict:
    """What every exported artifact says about itself (ONNX metadata_props)."""
    return {"shrinkflow.variant": name, "shrinkflow.input": "raw",
            "shrinkflow.norm": json.dumps(ckpt.get("norm", {}), sort_keys=True),
            "shrinkflow.classes": json.dumps(ckpt.get("classes", [])),
            "shrinkflow.source_sha256": source_sha256,
            "shrinkflow.quantization": quantization,
            "shrinkflow.weight_bits": str((ckpt.get("qat") or {}).get("weight_bits", 0))}


@step("convert", ConvertStep, stage="convert")
def run(config: ConvertStep, ctx: Context, data: DataArtifact, model: ModelArtifact
        ) -> ExportArtifact:
    """Export the checkpoint (preprocessing inside) to the target's format; fully checked."""
    if config.target != "onnxruntime":
        raise ShrinkflowError(f"convert: target {config.target!r} is not supported yet")
    import torch

    torch.set_num_threads(ctx.threads)
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
