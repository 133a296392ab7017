"""torchvision VGG-11: its ``features`` as a layered stack (the second one, after AlexNet's).

Layer names come from the torchvision module itself (``conv1_1, relu1_1, pool1, conv2_1, ...``:
block b's i-th convolution, the ReLU after it, the pool that closes the block), so they cannot
drift from the layers they name. State-dict keys are torchvision's (``features.0.weight`` ...).
"""

from __future__ import annotations

from functools import cache

import torch
from torch import nn
from torchvision.models import vgg11 as tv_vgg11

from featurizer.architectures.layered import LayeredFeatures, layer_index, materialize
from featurizer.architectures.pooling import Pooling
from featurizer.architectures.registry import register_builder


def vgg_layer_names(features: nn.Sequential) -> tuple[str, ...]:
    """The conventional names of a torchvision VGG ``features`` stack, layer by layer."""
    names: list[str] = []
    block, conv = 1, 0
    for layer in features:
        if isinstance(layer, nn.Conv2d):
            conv += 1
            names.append(f"conv{block}_{conv}")
        elif isinstance(layer, nn.BatchNorm2d):
            names.append(f"bn{block}_{conv}")
        elif isinstance(layer, nn.ReLU):
            names.append(f"relu{block}_{conv}")
        elif isinstance(layer, nn.MaxPool2d):
            names.append(f"pool{block}")
            block, conv = block + 1, 0
        else:
            raise ValueError(f"a VGG stack holds Conv2d, BatchNorm2d, ReLU and MaxPool2d layers, got {layer!r}")
    return tuple(names)


@cache
def _vgg11_layer_names() -> tuple[str, ...]:
    """The layer names of VGG-11's ``features``, read from a meta-device build."""
    with torch.device("meta"):
        features = tv_vgg11(weights=None).features
    return vgg_layer_names(features)


def _torchvision_init(module: nn.Module) -> None:
    """torchvision VGG's own initialisation of its convolutions (``VGG.__init__``, init_weights)."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            nn.init.constant_(module.bias, 0)


@register_builder("vgg11_features")
def vgg11_features(*, layer: str | int = "pool5", pooling: str = "flatten") -> LayeredFeatures:
    """torchvision VGG-11's ``features`` cut after ``layer`` (inclusive)."""
    chosen = Pooling.parse(pooling, "params.pooling")
    names = _vgg11_layer_names()
    cut = layer_index(names, layer)
    with torch.device("meta"):
        layers = list(tv_vgg11(weights=None).features)[: cut + 1]
    return LayeredFeatures(materialize(layers, _torchvision_init), names, cut=cut, pooling=chosen)
