"""``FeatureHead``: a small classifier trained on a backbone's feature map (``featurizer train``)."""

from __future__ import annotations

import torch
from torch import nn

from featurizer.architectures.pooling import ROW_POOLINGS, Pooling, apply_pooling
from featurizer.architectures.registry import ArchitectureError, register_builder


class FeatureHead(nn.Module):
    """Pool the feature map, then an MLP (or one linear layer)."""

    def __init__(self, in_features: int, num_classes: int, pooling: Pooling, hidden: int, dropout: float) -> None:
        super().__init__()
        self.pooling = pooling
        layers: list[nn.Module] = []
        if hidden > 0:
            layers += [nn.Dropout(dropout), nn.Linear(in_features, hidden), nn.ReLU(inplace=True)]
            in_features = hidden
        layers += [nn.Dropout(dropout), nn.Linear(in_features, num_classes)]
        self.head = nn.Sequential(*layers)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.head(apply_pooling(feature_map, self.pooling))


@register_builder("feature_head")
def feature_head(*, in_features: int, num_classes: int, pooling: str = "avg", hidden: int = 0,
                 dropout: float = 0.0) -> FeatureHead:
    if pooling not in ROW_POOLINGS:
        raise ArchitectureError(f"params.pooling of a feature_head must be one of {', '.join(ROW_POOLINGS)}, "
                                f"got {pooling!r}")
    return FeatureHead(in_features, num_classes, Pooling(pooling), hidden, dropout)
