"""The lecture's LargeNet: a small classifier on 32x32 RGB images.

Its input numbers are plain constants here, beside the network they belong to; the ``InputSpec``
a manifest of it carries is built from them in ``featurizer.registry.presets`` (this layer knows
nothing of manifests).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from featurizer.architectures.registry import register_builder

INPUT_SIZE = 32                   # height = width: the network's fc1 expects 10x5x5 after two pools
INPUT_MEAN = (0.5, 0.5, 0.5)      # the lecture's Normalize(0.5, 0.5): pixels scaled to [-1, 1]
INPUT_STD = (0.5, 0.5, 0.5)


class LargeNet(nn.Module):
    """3x32x32 -> conv5x5(5) -> pool -> conv5x5(10) -> pool -> 250 -> 32 -> classes."""

    def __init__(self, num_classes: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 5, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(5, 10, 5)
        self.fc1 = nn.Linear(10 * 5 * 5, 32)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.reshape(-1, 10 * 5 * 5)
        return self.fc2(F.relu(self.fc1(x)))


@register_builder("largenet")
def largenet(*, num_classes: int = 1) -> LargeNet:
    return LargeNet(num_classes=num_classes)
