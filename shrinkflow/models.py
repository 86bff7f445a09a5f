"""Architectures (a configurable CNN) and the checkpoint format.

A checkpoint is a plain dict of tensors and primitives, loadable with
``torch.load(weights_only=True)``; it stores the architecture *as built* (after
structured pruning the widths differ from params.yaml) and the config that made it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shrinkflow.artifacts import ModelArtifact, atomic_path, file_sha256
from shrinkflow.config import ArchParams
from shrinkflow.errors import ShrinkflowError

CHECKPOINT_FORMAT = "shrinkflow.checkpoint/1"

# Training draws every random number from explicit generators, never torch's global RNG,
# so variants trained concurrently in threads stay bit-for-bit reproducible. Weight
# initialisation is the one global-RNG use: it runs under this lock with its own seed.
_INIT_LOCK = threading.Lock()
_local = threading.local()


@contextlib.contextmanager
def dropout_generator(g: torch.Generator) -> Iterator[None]:
    """Make :class:`Dropout` in this thread draw its masks from ``g``."""
    old = getattr(_local, "generator", None)
    _local.generator = g
    try:
        yield
    finally:
        _local.generator = old


class Dropout(nn.Module):
    """Inverted dropout drawing from the thread's training generator (see above).

    In eval mode it is the identity, so exported graphs carry no trace of it.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.empty_like(x).bernoulli_(1 - self.p, generator=getattr(_local, "generator", None))
        return x * keep / (1 - self.p)


class CNN(nn.Module):
    """Conv blocks -> global average pool or flatten -> (hidden linear) -> classifier."""

    def __init__(self, arch: ArchParams, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        c, h, w = (int(d) for d in input_shape)
        k = arch.kernel_size
        for b, block in enumerate(arch.blocks):
            for width in block:
                layers.append(nn.Conv2d(c, width, k, padding=k // 2, bias=not arch.batchnorm))
                if arch.batchnorm:
                    layers.append(nn.BatchNorm2d(width))
                layers.append(nn.ReLU())
                c = width
            if b < len(arch.blocks) - 1:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
        self.features = nn.Sequential(*layers)
        if arch.head == "gap":
            self.pool: nn.Module = nn.AdaptiveAvgPool2d(1)
        else:
            self.pool = nn.Identity()
            c = c * h * w
        head: list[nn.Module] = [nn.Flatten()]
        if arch.hidden:
            head += [nn.Linear(c, arch.hidden), nn.ReLU()]
            c = arch.hidden
        if arch.dropout:
            head.append(Dropout(arch.dropout))
        head.append(nn.Linear(c, num_classes))
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


def build_model(arch: ArchParams, input_shape: tuple[int, ...], num_classes: int,
                seed: int | None = None) -> CNN:
    """Build the CNN for inputs of shape (C, H, W); ``seed`` makes its initial weights
    reproducible (and safe to call from several threads at once)."""
    if seed is None:
        return CNN(arch, input_shape, num_classes)
    with _INIT_LOCK, torch.random.fork_rng():
        torch.manual_seed(seed)
        return CNN(arch, input_shape, num_classes)


def arch_of(model: CNN, like: ArchParams) -> ArchParams:
    """The architecture a (possibly structurally pruned) model actually has now."""
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    widths = iter(c.out_channels for c in convs)
    blocks = [[next(widths) for _ in block] for block in like.blocks]
    linears = [m for m in model.head if isinstance(m, nn.Linear)]
    hidden = linears[0].out_features if like.hidden else 0
    return like.model_copy(update={"blocks": blocks, "hidden": hidden})


def count_params(model: nn.Module) -> tuple[int, int]:
    """(all parameters, non-zero parameters)."""
    total = nonzero = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += int(torch.count_nonzero(p).item())
    return total, nonzero


def save_checkpoint(model: CNN, arch: ArchParams, path: str | Path, **info: Any) -> str:
    """Write a weights-only checkpoint atomically; return its sha256.

    ``info`` holds primitives describing how the model was made (input_shape,
    num_classes, norm, step, config, parent, masks, ...).
    """
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "arch": arch.model_dump(mode="json"),
               "state_dict": state, **info}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return file_sha256(path)


def load_checkpoint(path: str | Path) -> tuple[CNN, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`; returns (model in eval mode, dict)."""
    p = Path(path)
    if not p.is_file():
        raise ShrinkflowError(f"{p}: checkpoint not found; rerun the step that makes it")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ShrinkflowError(f"{p}: corrupt or foreign checkpoint ({exc}); rerun the step "
                              "that makes it") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ShrinkflowError(f"{p}: not a shrinkflow checkpoint ({CHECKPOINT_FORMAT})")
    arch = ArchParams.model_validate(ckpt["arch"])
    model = build_model(arch, tuple(ckpt["input_shape"]), int(ckpt["num_classes"]))
    if ckpt.get("qat"):
        from shrinkflow.compress.quantize import prepare_qat

        model = prepare_qat(model, per_channel=bool(ckpt["qat"]["per_channel"]))
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, ckpt


def model_record(path: str | Path, summary: dict[str, float] | None = None,
                 name: str | None = None, parent: str | None = None) -> ModelArtifact:
    """The record of a checkpoint on disk (what ``python -m tasks.<step>`` passes on).

    ``name``/``parent`` label it as a variant; by default the names stored in it.
    """
    model, ckpt = load_checkpoint(path)
    total, nonzero = count_params(model)
    return ModelArtifact(
        path=str(Path(path).resolve()), sha256=file_sha256(path), name=name or ckpt["name"],
        step=ckpt["step"], config_hash=ckpt["config_hash"],
        parent=parent if parent is not None else ckpt.get("parent"),
        data_fingerprint=ckpt["data_fingerprint"], num_params=total, nonzero_params=nonzero,
        summary=summary or {},
    )
