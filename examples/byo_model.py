"""Bring your own architecture: a small residual network built by a factory.

In params.yaml (this file at <workspace>/examples/byo_model.py)::

    train:
      model:
        factory: "examples.byo_model:resnet"
        kwargs: {width: 16, blocks: 2}

shrinkflow calls ``resnet(input_shape=(C, H, W), num_classes=K, **kwargs)`` and expects
a ``torch.nn.Module`` returning (N, K) logits. The file's sha256 is part of the cache
keys: editing it retrains the teacher and everything made from it.
"""

from torch import nn


class Block(nn.Module):
    """conv-bn-relu-conv-bn, plus the input (the skip connection), then relu."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


class ResNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int, blocks: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(*(Block(width) for _ in range(blocks)))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))


def resnet(input_shape, num_classes, width=16, blocks=2):
    return ResNet(input_shape[0], num_classes, width, blocks)
