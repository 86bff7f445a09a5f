"""int8 quantization: ONNX Runtime dynamic and static (QDQ, calibrated), and
quantization-aware training (fake-quant in torch, exported as QDQ ONNX that ONNX Runtime
fuses into int8 kernels such as QLinearConv).

Static QDQ is the right default for CNNs: ORT's dynamic int8 turns convolutions into
ConvInteger, which is several times slower than fp32 on CPU.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shrinkflow.artifacts import DataArtifact, ModelArtifact
from shrinkflow.config import QuantizeStep
from shrinkflow.errors import ShrinkflowError

QMIN, QMAX = -128, 127
# Weights use 7 of their 8 bits (|q| <= 63). ONNX Runtime runs int8 convs as u8 x s8
# products summed pairwise into int16 (VPMADDUBSW on AVX2 without VNNI), which
# saturates with full-range weights; measured here, that cost ~3 pp of top-1
# agreement on a QAT model. It is the same trade as ORT's own reduce_range.
WEIGHT_QMAX = 63


# --- quantization-aware training -----------------------------------------------------


class ActFakeQuant(nn.Module):
    """Per-tensor asymmetric int8 fake-quant with an EMA min/max observer.

    After a ReLU the range starts at 0, so the zero point is -128: ONNX Runtime then
    folds the ReLU into the preceding int8 conv.
    """

    def __init__(self, momentum: float = 0.05):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("min_val", torch.tensor(0.0))
        self.register_buffer("max_val", torch.tensor(0.0))
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        lo, hi = x.min(), x.max()
        if not bool(self.initialized):
            self.min_val.copy_(lo)
            self.max_val.copy_(hi)
            self.initialized.fill_(True)
        else:
            self.min_val.lerp_(lo, self.momentum)
            self.max_val.lerp_(hi, self.momentum)
        lo = torch.clamp(self.min_val, max=0.0)
        hi = torch.clamp(self.max_val, min=0.0)
        scale = torch.clamp((hi - lo) / (QMAX - QMIN), min=1e-8)
        self.scale.copy_(scale)
        self.zero_point.copy_(torch.clamp(torch.round(QMIN - lo / scale), QMIN, QMAX).int())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self._observe(x)
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, QMIN, QMAX)


def _weight_fake_quant(w: torch.Tensor, per_channel: bool, scale_buf: torch.Tensor,
                       training: bool) -> torch.Tensor:
    """Symmetric int8 weights (zero point 0), per output channel or per tensor."""
    if training:
        with torch.no_grad():
            dims = tuple(range(1, w.dim()))
            amax = w.abs().amax(dim=dims) if per_channel else w.abs().max().reshape(1)
            scale_buf.copy_(torch.clamp(amax / WEIGHT_QMAX, min=1e-8).expand_as(scale_buf))
    if per_channel:
        zeros = torch.zeros(w.shape[0], dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, scale_buf, zeros, 0, QMIN, QMAX)
    return torch.fake_quantize_per_tensor_affine(w, scale_buf[0], torch.tensor(0, dtype=torch.int32),
                                                 QMIN, QMAX)


class QConv2d(nn.Module):
    """A conv (BatchNorm already folded in) whose weights are fake-quantized to int8."""

    def __init__(self, conv: nn.Conv2d, per_channel: bool):
        super().__init__()
        self.conv = conv
        self.per_channel = per_channel
        self.register_buffer("w_scale", torch.ones(conv.out_channels if per_channel else 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = _weight_fake_quant(self.conv.weight, self.per_channel, self.w_scale, self.training)
        c = self.conv
        return F.conv2d(x, w, c.bias, c.stride, c.padding, c.dilation, c.groups)


class QLinear(nn.Module):
    def __init__(self, linear: nn.Linear, per_channel: bool):
        super().__init__()
        self.linear = linear
        self.per_channel = per_channel
        self.register_buffer("w_scale", torch.ones(linear.out_features if per_channel else 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = _weight_fake_quant(self.linear.weight, self.per_channel, self.w_scale, self.training)
        return F.linear(x, w, self.linear.bias)


class QATModel(nn.Module):
    """The CNN with BatchNorm folded into the convs and int8 fake-quant around every
    conv and linear layer. Same forward signature; its checkpoint stores ``qat``."""

    def __init__(self, features: nn.Sequential, pool: nn.Module, head: nn.Sequential):
        super().__init__()
        self.features, self.pool, self.head = features, pool, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


def _fold_bn(layers: list[nn.Module]) -> list[nn.Module]:
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    out: list[nn.Module] = []
    i = 0
    while i < len(layers):
        m = layers[i]
        if isinstance(m, nn.Conv2d) and i + 1 < len(layers) and \
                isinstance(layers[i + 1], nn.BatchNorm2d):
            out.append(fuse_conv_bn_eval(m.eval(), layers[i + 1].eval()))
            i += 2
        else:
            out.append(m)
            i += 1
    return out


def prepare_qat(model: nn.Module, per_channel: bool = True) -> QATModel:
    """Fold BatchNorm, then insert int8 fake-quant on the input, on every conv/linear
    weight, and after every ReLU and before every linear layer."""
    if isinstance(model, QATModel):
        return model
    feats: list[nn.Module] = [ActFakeQuant()]
    for m in _fold_bn(list(model.features)):
        if isinstance(m, nn.Conv2d):
            feats.append(QConv2d(m, per_channel))
        elif isinstance(m, nn.ReLU | nn.MaxPool2d):
            # Re-quantize after pooling too, so the next conv reads int8 (DQ -> Conv -> Q).
            feats += [m, ActFakeQuant()]
        else:
            feats.append(m)
    head: list[nn.Module] = []
    for m in model.head:
        if isinstance(m, nn.Linear):
            head += [ActFakeQuant(), QLinear(m, per_channel)]
        elif isinstance(m, nn.ReLU):
            head += [m]
        else:
            head.append(m)
    return QATModel(nn.Sequential(*feats), model.pool, nn.Sequential(*head))


# --- ONNX Runtime quantization --------------------------------------------------------


def calibration_subset(x: np.ndarray, y: np.ndarray, size: int, seed: int = 0
                       ) -> tuple[np.ndarray, str]:
    """A stratified subset of (held-out) examples for calibration, and its sha256."""
    from sklearn.model_selection import train_test_split

    if size < len(y):
        idx, _ = train_test_split(np.arange(len(y)), train_size=size, stratify=y,
                                  random_state=seed)
        x = x[np.sort(idx)]
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x, hashlib.sha256(x.tobytes()).hexdigest()


class _Reader:
    """Feeds calibration data in equal-size batches (ORT's Percentile needs that)."""

    def __init__(self, input_name: str, x: np.ndarray, batch: int):
        n = max(batch, len(x) // batch * batch)
        self.batches = [x[i:i + batch] for i in range(0, min(n, len(x)), batch)]
        self.input_name = input_name
        self.i = 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return {self.input_name: self.batches[self.i - 1]}

    def rewind(self):
        self.i = 0


def quantize_onnx(float_path: str | Path, out_path: str | Path, step: QuantizeStep,
                  calibration: np.ndarray | None) -> None:
    """Write an int8 ONNX model quantized by ONNX Runtime (dynamic, or static QDQ)."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import onnx
    from shrinkflow.artifacts import atomic_path

    with atomic_path(out_path) as tmp:
        pre = tmp.with_name(tmp.name + ".pre.onnx")
        try:
            quant_pre_process(str(float_path), str(pre), skip_symbolic_shape=True)
            if step.method == "dynamic":
                quantize_dynamic(str(pre), str(tmp), weight_type=QuantType.QInt8,
                                 per_channel=step.per_channel, reduce_range=True)
            else:
                if calibration is None:
                    raise ShrinkflowError("quantize static: no calibration data")
                name = onnx.load(str(pre)).graph.input[0].name
                method = {"minmax": CalibrationMethod.MinMax,
                          "entropy": CalibrationMethod.Entropy,
                          "percentile": CalibrationMethod.Percentile}[step.calibrator]
                quantize_static(
                    str(pre), str(tmp), _Reader(name, calibration, batch=32),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=step.per_channel,
                    reduce_range=True, calibrate_method=method,
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True,
                                   "CalibPercentile": step.percentile},
                )
        finally:
            pre.unlink(missing_ok=True)
            for leftover in tmp.parent.glob(tmp.name + "*.data"):
                leftover.unlink()


def fold_weight_quantization(path: str | Path) -> None:
    """Store fake-quantized weights as int8 initializers (QuantizeLinear of a constant
    becomes its result), so a QAT export is as small as ORT's own int8 files."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    consts = {init.name: numpy_helper.to_array(init) for init in g.initializer}
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(a.t)
    keep, new_inits = [], []
    for node in g.node:
        if node.op_type == "QuantizeLinear" and all(i in consts for i in node.input[:3] if i):
            x, scale = consts[node.input[0]], consts[node.input[1]]
            zp = consts[node.input[2]] if len(node.input) > 2 and node.input[2] else \
                np.zeros_like(scale, dtype=np.uint8)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            if scale.ndim == 1 and scale.size > 1:
                shape = [1] * x.ndim
                shape[axis] = -1
                scale_b, zp_b = scale.reshape(shape), zp.reshape(shape).astype(np.int32)
            else:
                scale_b, zp_b = scale, zp.astype(np.int32)
            info = np.iinfo(zp.dtype)
            q = np.clip(np.rint(x / scale_b) + zp_b, info.min, info.max).astype(zp.dtype)
            new_inits.append(numpy_helper.from_array(q, node.output[0]))
        else:
            keep.append(node)
    if not new_inits:
        return
    used = {i for n in keep for i in n.input} | {o.name for o in g.output}
    keep = [n for n in keep if n.op_type != "Constant" or n.output[0] in used]
    del g.node[:]
    g.node.extend(keep)
    inits = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(inits + new_inits)
    onnx.save(model, str(path))


def int8_op_counts(path: str | Path) -> dict[str, int]:
    """Op types in ONNX Runtime's optimized graph (to verify int8 kernels are used)."""
    import tempfile

    import onnxruntime as ort

    import onnx

    with tempfile.TemporaryDirectory() as d:
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(Path(d) / "opt.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        counts: dict[str, int] = {}
        for n in onnx.load(so.optimized_model_filepath).graph.node:
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def qat(parent: ModelArtifact, step: QuantizeStep, data: DataArtifact, out_path: str | Path,
        threads: int = 2) -> ModelArtifact:
    """Quantization-aware training: fold BatchNorm, insert int8 fake-quant, fine-tune
    (keeping pruning masks), save. ``convert`` exports it as a QDQ ONNX model."""
    from shrinkflow.config import ArchParams
    from shrinkflow.data import load_prepared
    from shrinkflow.models import load_checkpoint
    from shrinkflow.training import derive, fit, fit_config_for, load_masks

    model, ckpt = load_checkpoint(parent.path)
    splits = load_prepared(data.path)
    qmodel = prepare_qat(model, per_channel=step.per_channel)
    masks = _rename_masks(load_masks(ckpt), qmodel)
    result = fit(qmodel, splits, fit_config_for(step.fit, threads), masks=masks, desc="qat")
    return derive(parent, qmodel, ArchParams.model_validate(ckpt["arch"]), step, out_path,
                  data, splits, masks=masks, qat={"per_channel": step.per_channel},
                  summary=result.summary())


def _rename_masks(masks: dict[str, torch.Tensor], qmodel: QATModel) -> dict[str, torch.Tensor]:
    """Carry pruning masks over to the QAT model's parameter names (same tensors, by
    shape and order: folding BatchNorm rescales rows but keeps zeros zero)."""
    if not masks:
        return {}
    names = [n for n, p in qmodel.named_parameters() if n.endswith("weight") and p.dim() > 1]
    shapes = {n: p.shape for n, p in qmodel.named_parameters()}
    old = list(masks.items())
    out = {}
    for (_, m), name in zip(old, names, strict=False):
        if shapes[name] == m.shape:
            out[name] = m
    return out
