"""Model builders: keyword-only functions looked up by the manifest's ``architecture``.

Each builder returns an ``nn.Module`` whose ``state_dict`` keys are the names that weights files
use (torchvision's names for AlexNet: ``features.0.weight`` ...). Builders never load weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import alexnet as tv_alexnet

from featurizer.registry.manifest import InputSpec, ManifestError, POOLINGS

Builder = Callable[..., nn.Module]
_BUILDERS: dict[str, Builder] = {}

# Layer names of torchvision AlexNet's `features`, after which a stack can be cut.
ALEXNET_LAYERS: dict[str, int] = {
    "conv1": 0, "relu1": 1, "pool1": 2, "conv2": 3, "relu2": 4, "pool2": 5, "conv3": 6,
    "relu3": 7, "conv4": 8, "relu4": 9, "conv5": 10, "relu5": 11, "pool5": 12,
}
ALEXNET_LAYER_NAMES = {index: name for name, index in ALEXNET_LAYERS.items()}


def register_builder(name: str) -> Callable[[Builder], Builder]:
    def wrap(fn: Builder) -> Builder:
        if name in _BUILDERS:
            raise ValueError(f"builder {name!r} is already registered")
        _BUILDERS[name] = fn
        return fn
    return wrap


def list_builders() -> list[str]:
    return sorted(_BUILDERS)


def build(architecture: str, params: Mapping[str, Any]) -> nn.Module:
    """Build the (weightless) module for a manifest; bad names/params raise ManifestError."""
    if architecture not in _BUILDERS:
        raise ManifestError(f"unknown architecture {architecture!r}; known: {', '.join(list_builders())}")
    try:
        return _BUILDERS[architecture](**params)
    except TypeError as error:
        raise ManifestError(f"bad params for {architecture!r}: {error}") from None


def resolve_alexnet_layer(layer: str | int) -> int:
    """'conv3' or 6 or '6' -> index into AlexNet's `features`."""
    if isinstance(layer, str) and layer in ALEXNET_LAYERS:
        return ALEXNET_LAYERS[layer]
    try:
        index = int(layer)
    except (TypeError, ValueError):
        raise ManifestError(
            f"unknown layer {layer!r}; expected one of {', '.join(ALEXNET_LAYERS)} or an index 0..12") from None
    if not 0 <= index <= 12:
        raise ManifestError(f"layer index {index} is outside AlexNet's features (0..12)")
    return index


def apply_pooling(x: torch.Tensor, pooling: str) -> torch.Tensor:
    """[N, C, H, W] -> [N, C*H*W] (flatten), [N, C] (avg/max) or unchanged (none)."""
    if pooling == "flatten":
        return torch.flatten(x, 1)
    if pooling == "avg":
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
    if pooling == "max":
        return torch.flatten(F.adaptive_max_pool2d(x, 1), 1)
    if pooling == "none":
        return x
    raise ManifestError(f"unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)}")


def _alexnet_features_prefix(cut: int) -> nn.Sequential:
    """torchvision's own ``features`` layers up to ``cut``, initialised as torchvision does, without
    paying for the 58M-parameter classifier (built on the meta device, then dropped)."""
    with torch.device("meta"):
        layers = list(tv_alexnet(weights=None).features)[: cut + 1]
    stack = nn.Sequential(*layers).to_empty(device="cpu")
    for module in stack.modules():
        if isinstance(module, nn.Conv2d):
            module.reset_parameters()
    return stack


class AlexNetFeatures(nn.Module):
    """torchvision AlexNet's ``features`` cut after layer ``cut`` (inclusive)."""

    def __init__(self, cut: int, pooling: str) -> None:
        super().__init__()
        self.features = _alexnet_features_prefix(cut)
        self.cut = cut
        self.pooling = pooling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_taps(self, x: torch.Tensor, taps: set[int]) -> dict[int, torch.Tensor]:
        """One pass through the stack, keeping the output after each layer index in ``taps``.
        A tap that more layers will follow is cloned: torchvision's ReLUs work in place."""
        out: dict[int, torch.Tensor] = {}
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in taps:
                out[index] = x if len(out) + 1 == len(taps) else x.clone()
            if len(out) == len(taps):
                break
        return out


@register_builder("alexnet_features")
def alexnet_features(*, layer: str | int = "pool5", pooling: str = "flatten") -> AlexNetFeatures:
    if pooling not in POOLINGS:
        raise ManifestError(f"params.pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    return AlexNetFeatures(resolve_alexnet_layer(layer), pooling)


class LargeNet(nn.Module):
    """The lecture's LargeNet: 3x32x32 -> conv5x5(5) -> pool -> conv5x5(10) -> pool -> 250 -> 32 -> classes."""

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


# LargeNet's input: 32x32 RGB scaled to [-1, 1], the lecture's normalisation.
LARGENET_INPUT = InputSpec(mode="resize", resize=None, height=32, width=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@register_builder("largenet")
def largenet(*, num_classes: int = 1) -> LargeNet:
    return LargeNet(num_classes=num_classes)


@register_builder("alexnet_classifier")
def alexnet_classifier(*, num_classes: int = 1000) -> nn.Module:
    return tv_alexnet(weights=None, num_classes=num_classes)


class FeatureHead(nn.Module):
    """A small classifier on a backbone's feature map: pool, then an MLP (or one linear layer)."""

    def __init__(self, in_features: int, num_classes: int, pooling: str, hidden: int, dropout: float) -> None:
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
    if pooling not in ("flatten", "avg", "max"):
        raise ManifestError(f"params.pooling of a feature_head must be flatten, avg or max, got {pooling!r}")
    return FeatureHead(in_features, num_classes, pooling, hidden, dropout)
