"""Step ``quantize``: int8, three ways.

- ``qat``: quantization-aware training (fake-quant in torch, fine-tuned; ``convert``
  exports it as QDQ ONNX that ONNX Runtime runs with int8 kernels such as QLinearConv);
- ``static``: ONNX Runtime QDQ quantization of the parent's float ONNX file, calibrated
  on a stratified subset of the validation split;
- ``dynamic``: ONNX Runtime dynamic quantization (slower than fp32 for CNNs:
  convolutions become ConvInteger; the gates catch it).

``weight_bits``: 8 uses the full int8 range; 7 keeps |q| <= 63, which ONNX Runtime needs
on CPUs without VNNI (their int8 kernels sum products pairwise in int16 and saturate);
``auto`` picks 8 where the CPU has VNNI or AMX, else 7 (decided when the plan is made,
recorded in the lineage).
"""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from shrinkflow.core.config import Int, Section
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.files import file_sha256
from shrinkflow.core.records import DataArtifact, ExportArtifact, ModelArtifact
from shrinkflow.data.prepare import load_prepared, load_raw
from shrinkflow.models.checkpoint import load_checkpoint
from shrinkflow.models.qat import QATModel, prepare_qat, qat_refusal
from shrinkflow.models.spec import parse_spec
from shrinkflow.steps.base import Context, step
from shrinkflow.steps.fit import FitParams, derive, fit, fit_config_for, load_masks
from shrinkflow.targets import onnxruntime as ort_target


class QuantizeStep(Section):
    """int8: ONNX Runtime dynamic or static (QDQ, calibrated), or quantization-aware training."""

    kind: Literal["quantize"] = "quantize"
    method: Literal["dynamic", "static", "qat"] = "static"
    calibrator: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = True
    # Calibration examples, drawn stratified from the validation split (never test).
    calibration_size: Int = Field(512, ge=16, le=1_000_000)
    percentile: float = Field(99.999, gt=90, le=100)
    weight_bits: Literal["auto", 7, 8] = "auto"
    fit: FitParams = Field(default_factory=lambda: FitParams(epochs=2, lr=1e-4))

    @property
    def is_onnx_only(self) -> bool:
        """Dynamic and static act on the ONNX file: no torch step can follow them."""
        return self.method in ("dynamic", "static")

    def bits(self) -> int:
        if self.weight_bits == "auto":
            raise ValueError("quantize.weight_bits 'auto' must be resolved by the plan")
        return int(self.weight_bits)


def resolve_weight_bits(config: QuantizeStep, int8_dot_product: bool) -> QuantizeStep:
    """``auto`` -> 8 on CPUs with VNNI/AMX, 7 elsewhere (see the module docstring)."""
    if config.weight_bits != "auto":
        return config
    return config.model_copy(update={"weight_bits": 8 if int8_dot_product else 7})


def calibration_subset(x: np.ndarray, y: np.ndarray, size: int, seed: int = 0
                       ) -> tuple[np.ndarray, str]:
    """A stratified subset of (held-out) raw examples for calibration, and its sha256."""
    from sklearn.model_selection import train_test_split

    if size < len(y):
        idx, _ = train_test_split(np.arange(len(y)), train_size=size, stratify=y,
                                  random_state=seed)
        x = x[np.sort(idx)]
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x, hashlib.sha256(x.tobytes()).hexdigest()


def calibration_data(data: DataArtifact, size: int) -> tuple[np.ndarray, str]:
    """The calibration subset of prepared data (raw pixels: the artifact's own input;
    tokens for the embedding task)."""
    if data.task == "embedding":
        from shrinkflow.steps.embed import calibration_tokens

        return calibration_tokens(data, size)
    arrays, _ = load_raw(data.path)
    return calibration_subset(arrays["x_val"], arrays["y_val"], size)


@step("quantize", QuantizeStep, stage="compress")
def run(config: QuantizeStep, ctx: Context, data: DataArtifact, model: ModelArtifact,
        export: ExportArtifact | None = None) -> ModelArtifact | ExportArtifact:
    """int8: quantization-aware training (on the checkpoint) or ONNX Runtime static /
    dynamic quantization (on the parent's float ONNX file)."""
    if config.method == "qat":
        return _qat(config, ctx, data, model)
    if export is None:
        raise ShrinkflowError(f"quantize {config.method}: needs the parent's ONNX file")
    return _onnx(config, ctx, data, export)


def _qat(config: QuantizeStep, ctx: Context, data: DataArtifact, model: ModelArtifact
         ) -> ModelArtifact:
    """Fold BatchNorm, insert int8 fake-quant, fine-tune (keeping pruning masks), save."""
    net, ckpt = load_checkpoint(model.path)
    if isinstance(net, QATModel):
        raise ShrinkflowError("quantize qat: the parent is already quantization-aware")
    why = qat_refusal(net)
    if why:
        raise ShrinkflowError(f"quantize qat: {why}")
    splits = load_prepared(data.path)
    torch.set_num_threads(ctx.threads)
    qmodel = prepare_qat(net, per_channel=config.per_channel, weight_bits=config.bits())
    masks = _rename_masks(load_masks(ckpt), qmodel)
    result = fit(qmodel, splits, fit_config_for(config.fit, ctx.threads), masks=masks,
                 desc=f"{ctx.model}:qat")
    return derive(model, qmodel, parse_spec(ckpt["arch"]), config,
                  ctx.out_dir / "model.pt", data, splits, masks=masks,
                  qat={"per_channel": config.per_channel, "weight_bits": config.bits()},
                  summary=result.summary(), history=result.history)


def _onnx(config: QuantizeStep, ctx: Context, data: DataArtifact, export: ExportArtifact
          ) -> ExportArtifact:
    calib, fingerprint = None, ""
    if config.method == "static":
        calib, fingerprint = calibration_data(data, config.calibration_size)
    out = ctx.out_dir / "model.onnx"
    ort_target.quantize_onnx(export.path, out, config.method, calib, config.calibrator,
                             config.per_channel, config.percentile,
                             reduce_range=config.bits() == 7,
                             transformer=data.task == "embedding")
    meta = {**ort_target.metadata_of(export.path), "shrinkflow.variant": ctx.model,
            "shrinkflow.quantization": config.method,
            "shrinkflow.calibration_fingerprint": fingerprint,
            "shrinkflow.weight_bits": str(config.bits())}
    ort_target.rewrite_metadata(out, meta)
    ort_target.compact_names(out)
    opset = ort_target.check_onnx(out)
    return ExportArtifact(path=str(out), sha256=file_sha256(out), name=ctx.model,
                          source_sha256=export.sha256, opset=opset, exporter=export.exporter,
                          config_hash=config.config_hash(), quantization=config.method,
                          calibration_fingerprint=fingerprint, weight_bits=config.bits())


def _rename_masks(masks: dict[str, torch.Tensor], qmodel: QATModel) -> dict[str, torch.Tensor]:
    """Carry pruning masks over to the QAT model's parameter names (same tensors, by
    shape and order: folding BatchNorm rescales rows but keeps zeros zero)."""
    if not masks:
        return {}
    names = [n for n, p in qmodel.named_parameters() if n.endswith("weight") and p.dim() > 1]
    shapes = {n: p.shape for n, p in qmodel.named_parameters()}
    out = {}
    for (_, m), name in zip(masks.items(), names, strict=False):
        if shapes[name] == m.shape:
            out[name] = m
    return out
