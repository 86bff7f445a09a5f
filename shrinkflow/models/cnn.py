"""The configurable CNN (shrinkflow's default teacher and student architecture)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from shrinkflow.core.config import Int, Section


class ArchParams(Section):
    """A CNN: conv blocks (each a list of conv widths, 2x2 max-pool between blocks), then
    global average pooling or flattening, an optional hidden linear layer, the classifier.

    Global average pooling keeps the head small, so the parameters sit in the convs,
    where structured pruning and quantization act.
    """

    blocks: list[list[Int]] = Field(default_factory=lambda: [[16, 16], [32, 32]], min_length=1)
    # gap: global average pool into the head (small head); flatten: every spatial
    # position feeds the head (many parameters, few FLOPs).
    head: Literal["gap", "flatten"] = "gap"
    hidden: Int = Field(0, ge=0, le=65536)
    dropout: float = Field(0.1, ge=0, lt=1)
    batchnorm: bool = True
    kernel_size: Int = Field(3, ge=1, le=7)

    @model_validator(mode="after")
    def _widths_positive(self) -> ArchParams:
        for i, block in enumerate(self.blocks):
            if not block:
                raise ValueError(f"blocks[{i}] is empty: give at least one conv width")
            if any(w < 1 or w > 16384 for w in block):
                raise ValueError(f"blocks[{i}]: conv widths must be 1..16384")
        return self

    def check_input(self, input_shape: tuple[int, ...], where: str) -> None:
        """Refuse an architecture that pools the input away (each block but the last
        halves height and width)."""
        if len(input_shape) != 3:
            return
        _, h, w = input_shape
        pools = len(self.blocks) - 1
        if min(h, w) >> pools < 1:
            raise ValueError(f"{where}.blocks: {len(self.blocks)} blocks pool a {h}x{w} input "
                             f"{pools} times (to {h >> pools}x{w >> pools}); use at most "
                             f"{max(1, min(h, w).bit_length())} blocks for this data")


_local = threading.local()


@contextlib.contextmanager
def dropout_generator(g: torch.Generator) -> Iterator[None]:
    """Make :class:`Dropout` draw its masks from ``g`` (training never touches torch's
    global random generator, so results do not depend on what ran before)."""
    old = getattr(_local, "generator", None)
    _local.generator = g
    try:
        yield
    finally:
        _local.generator = old


class Dropout(nn.Module):
    """Inverted dropout drawing from the training generator (see above).

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
    reproducible without disturbing the global random generator."""
    if seed is None:
        return CNN(arch, input_shape, num_classes)
    with torch.random.fork_rng():
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
