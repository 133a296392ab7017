"""torchvision AlexNet: its ``features`` as a layered stack, and the whole network as a classifier.

State-dict keys are torchvision's own (``features.0.weight`` ...), so torchvision's weights files
load as they are. Builders never load weights.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import alexnet as tv_alexnet

from featurizer.architectures.layered import LayeredFeatures, layer_index, materialize
from featurizer.architectures.pooling import Pooling
from featurizer.architectures.registry import register_builder

# Layer names of torchvision AlexNet's `features`, after which a stack can be cut.
ALEXNET_LAYERS: dict[str, int] = {
    "conv1": 0, "relu1": 1, "pool1": 2, "conv2": 3, "relu2": 4, "pool2": 5, "conv3": 6,
    "relu3": 7, "conv4": 8, "relu4": 9, "conv5": 10, "relu5": 11, "pool5": 12,
}
ALEXNET_LAYER_NAMES: tuple[str, ...] = tuple(ALEXNET_LAYERS)


def _torchvision_init(module: nn.Module) -> None:
    """What constructing torchvision's AlexNet does to a convolution: its default initialisation."""
    if isinstance(module, nn.Conv2d):
        module.reset_parameters()


@register_builder("alexnet_features")
def alexnet_features(*, layer: str | int = "pool5", pooling: str = "flatten") -> LayeredFeatures:
    """torchvision AlexNet's ``features`` cut after ``layer`` (inclusive)."""
    chosen = Pooling.parse(pooling, "params.pooling")
    cut = layer_index(ALEXNET_LAYER_NAMES, layer)
    with torch.device("meta"):
        layers = list(tv_alexnet(weights=None).features)[: cut + 1]
    return LayeredFeatures(materialize(layers, _torchvision_init), ALEXNET_LAYER_NAMES, cut=cut, pooling=chosen)


@register_builder("alexnet_classifier")
def alexnet_classifier(*, num_classes: int = 1000) -> nn.Module:
    """The whole torchvision AlexNet: ``[N, 3, H, W]`` -> ``[N, num_classes]`` logits."""
    return tv_alexnet(weights=None, num_classes=num_classes)
