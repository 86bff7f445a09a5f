"""Quantization-aware form of a model: BatchNorm folded into the convs, int8 fake-quant
on activations and weights, exported as QDQ ONNX that ONNX Runtime runs with int8
kernels (QLinearConv, QGemm).

Weights are symmetric int8. With ``weight_bits=7`` they use 7 of the 8 bits
(|q| <= 63): ONNX Runtime's int8 convolutions on AVX2 without VNNI sum u8 x s8 products
pairwise into int16 (VPMADDUBSW), which saturates with full-range weights (measured on
such a machine: ~3 pp of top-1 agreement lost). With VNNI or AMX the products
accumulate in int32 and full-range 8-bit weights are exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

QMIN, QMAX = -128, 127


def weight_qmax(bits: int) -> int:
    """Largest |q| of a symmetric weight with ``bits`` bits of range (7 -> 63, 8 -> 127)."""
    return 2 ** (bits - 1) - 1


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
                       training: bool, qmax: int) -> torch.Tensor:
    """Symmetric int8 weights (zero point 0), per output channel or per tensor."""
    if training:
        with torch.no_grad():
            dims = tuple(range(1, w.dim()))
            amax = w.abs().amax(dim=dims) if per_channel else w.abs().max().reshape(1)
            scale_buf.copy_(torch.clamp(amax / qmax, min=1e-8).expand_as(scale_buf))
    if per_channel:
        zeros = torch.zeros(w.shape[0], dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, scale_buf, zeros, 0, QMIN, QMAX)
    return torch.fake_quantize_per_tensor_affine(w, scale_buf[0], torch.tensor(0, dtype=torch.int32),
                                                 QMIN, QMAX)


class QConv2d(nn.Module):
    """A conv (BatchNorm already folded in) whose weights are fake-quantized to int8."""

    def __init__(self, conv: nn.Conv2d, per_channel: bool, weight_bits: int = 7):
        super().__init__()
        self.conv = conv
        self.per_channel = per_channel
        self.qmax = weight_qmax(weight_bits)
        self.register_buffer("w_scale", torch.ones(conv.out_channels if per_channel else 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = _weight_fake_quant(self.conv.weight, self.per_channel, self.w_scale, self.training,
                               self.qmax)
        c = self.conv
        return F.conv2d(x, w, c.bias, c.stride, c.padding, c.dilation, c.groups)


class QLinear(nn.Module):
    def __init__(self, linear: nn.Linear, per_channel: bool, weight_bits: int = 7):
        super().__init__()
        self.linear = linear
        self.per_channel = per_channel
        self.qmax = weight_qmax(weight_bits)
        self.register_buffer("w_scale", torch.ones(linear.out_features if per_channel else 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = _weight_fake_quant(self.linear.weight, self.per_channel, self.w_scale, self.training,
                               self.qmax)
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


SUPPORTED = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.Linear, nn.Flatten,
             nn.AdaptiveAvgPool2d, nn.Identity)


class QATRefused(ValueError):
    """The model has a layer quantization-aware training does not know."""


def _is_cnn(model: nn.Module) -> bool:
    from shrinkflow.models.cnn import CNN

    return isinstance(model, CNN)


def _leaves(module: nn.Module, prefix: str = "") -> list[nn.Module]:
    """The layers of a purely sequential stack, in order (nested ``nn.Sequential``s
    flattened); a module with its own ``forward`` that is not a known layer is refused."""
    from shrinkflow.models.cnn import Dropout

    if type(module).forward is nn.Sequential.forward:
        out: list[nn.Module] = []
        for name, child in module.named_children():
            out += _leaves(child, f"{prefix}.{name}" if prefix else name)
        return out
    if isinstance(module, (*SUPPORTED, nn.Dropout, Dropout)):
        return [module]
    for name, child in module.named_children():  # name the innermost unknown layer
        _leaves(child, f"{prefix}.{name}" if prefix else name)
    where = f"layer {prefix!r}" if prefix else "the model"
    raise QATRefused(f"{where} ({type(module).__name__}) has its own forward; QAT knows "
                     f"sequential stacks of {', '.join(c.__name__ for c in SUPPORTED)}, "
                     "Dropout: use quantize dynamic or static (ONNX Runtime) instead")


def qat_refusal(model: nn.Module) -> str | None:
    """None when :func:`prepare_qat` knows every layer of ``model``; else why not (one
    line naming the layer)."""
    if isinstance(model, QATModel) or _is_cnn(model):
        return None
    try:
        _leaves(model)
    except QATRefused as exc:
        return str(exc)
    return None


def _prepare_sequential(model: nn.Module, per_channel: bool, weight_bits: int) -> QATModel:
    """A sequential stack (e.g. an MLP): fake-quant on the input, every conv/linear weight,
    after every ReLU/max-pool and before every linear layer."""
    out: list[nn.Module] = [ActFakeQuant()]
    for m in _fold_bn(_leaves(model)):
        if isinstance(m, nn.Conv2d):
            if not isinstance(out[-1], ActFakeQuant):
                out.append(ActFakeQuant())
            out.append(QConv2d(m, per_channel, weight_bits))
        elif isinstance(m, nn.Linear):
            if not isinstance(out[-1], ActFakeQuant):
                out.append(ActFakeQuant())
            out.append(QLinear(m, per_channel, weight_bits))
        elif isinstance(m, nn.ReLU | nn.MaxPool2d):
            out += [m, ActFakeQuant()]
        else:
            out.append(m)
    return QATModel(nn.Sequential(*out), nn.Identity(), nn.Sequential())


def prepare_qat(model: nn.Module, per_channel: bool = True, weight_bits: int = 7) -> QATModel:
    """Fold BatchNorm, then insert int8 fake-quant on the input, on every conv/linear
    weight, and after every ReLU and before every linear layer. The CNN, or any purely
    sequential stack of the layers in ``SUPPORTED`` (else :class:`QATRefused`)."""
    if isinstance(model, QATModel):
        return model
    if not _is_cnn(model):
        return _prepare_sequential(model, per_channel, weight_bits)
    feats: list[nn.Module] = [ActFakeQuant()]
    for m in _fold_bn(list(model.features)):
        if isinstance(m, nn.Conv2d):
            feats.append(QConv2d(m, per_channel, weight_bits))
        elif isinstance(m, nn.ReLU | nn.MaxPool2d):
            # Re-quantize after pooling too, so the next conv reads int8 (DQ -> Conv -> Q).
            feats += [m, ActFakeQuant()]
        else:
            feats.append(m)
    head: list[nn.Module] = []
    for m in model.head:
        if isinstance(m, nn.Linear):
            head += [ActFakeQuant(), QLinear(m, per_channel, weight_bits)]
        else:
            head.append(m)
    return QATModel(nn.Sequential(*feats), model.pool, nn.Sequential(*head))


def to_float(model: nn.Module) -> nn.Module:
    """The float network inside a quantization-aware model: each fake-quantized conv and
    linear layer becomes its (BatchNorm-folded, QAT-trained) float layer and the
    activation fake-quant disappears; for runtimes that quantize with their own tools."""
    import copy

    if not isinstance(model, QATModel):
        return model
    out = copy.deepcopy(model)

    def strip(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, QConv2d):
                setattr(parent, name, child.conv)
            elif isinstance(child, QLinear):
                setattr(parent, name, child.linear)
            elif isinstance(child, ActFakeQuant):
                setattr(parent, name, nn.Identity())
            else:
                strip(child)

    strip(out)
    return out.eval()
