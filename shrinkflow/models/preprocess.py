"""Preprocessing inside the exported model: deployed artifacts take raw pixel arrays in
the data set's original scale, so nobody has to know shrinkflow's training statistics."""

from __future__ import annotations

import torch
from torch import nn


class Preprocess(nn.Module):
    """``(x / scale - mean) / std`` in float32, exactly the normalisation the model was
    trained with (``shrinkflow.data.prepare.normalize``)."""

    def __init__(self, scale: float, mean: float, std: float):
        super().__init__()
        self.register_buffer("scale", torch.tensor(float(scale), dtype=torch.float32))
        self.register_buffer("mean", torch.tensor(float(mean), dtype=torch.float32))
        self.register_buffer("std", torch.tensor(float(std), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x / self.scale - self.mean) / self.std


class Deployed(nn.Module):
    """A trained model behind its preprocessing: raw inputs in, logits out."""

    def __init__(self, model: nn.Module, norm: dict[str, float]):
        super().__init__()
        self.preprocess = Preprocess(norm["scale"], norm["mean"], norm["std"])
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(x))
