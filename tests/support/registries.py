"""Build small registries for tests: seeded weights, published through the real Registry API."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from featurizer.builders import build
from featurizer.demo import alexnet_features_manifest, features_state, seeded_alexnet
from featurizer.manifest import BackboneRef, InputSpec, Manifest, OutputSpec
from featurizer.registry import Registry

LARGENET_INPUT = InputSpec(mode="resize", resize=None, height=32, width=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
NATIVE = InputSpec(mode="native", resize=None, height=None, width=None)


def seeded_state(architecture: str, params: dict, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build(architecture, params).state_dict()


def publish_alexnet(root: Path, model: str = "alexnet", *, layer: str = "pool5", pooling: str = "flatten",
                    input: InputSpec = InputSpec(), seed: int = 0, version: Optional[int] = None) -> int:
    """AlexNet `features` cut after ``layer`` with the demo's seeded weights (torchvision names)."""
    manifest = alexnet_features_manifest(layer=layer, pooling=pooling, input=input, shape=())
    cut = build("alexnet_features", {"layer": layer}).state_dict().keys()
    state = {k: v for k, v in features_state(seeded_alexnet(seed)).items() if k in cut}
    return Registry(root).publish(model, manifest, state, version=version)


def publish_largenet(root: Path, model: str = "largenet", *, num_classes: int = 2,
                     labels: Sequence[str] = ("negative", "positive"), seed: int = 0,
                     state: Optional[dict[str, torch.Tensor]] = None, version: Optional[int] = None) -> int:
    """The lecture's LargeNet (32x32 input) as a classifier; 1 output unit = a binary head."""
    params = {"num_classes": num_classes}
    manifest = Manifest(kind="classifier", architecture="largenet", params=params, input=LARGENET_INPUT,
                        output=OutputSpec(shape=(num_classes,), labels=tuple(labels)))
    return Registry(root).publish(model, manifest, state or seeded_state("largenet", params, seed), version=version)


def publish_feature_head(root: Path, model: str, *, backbone: str = "alexnet", backbone_version: int = 1,
                         in_features: int = 256, labels: Sequence[str] = ("a", "b", "c"), pooling: str = "avg",
                         hidden: int = 0, seed: int = 0, version: Optional[int] = None) -> int:
    """A small classifier on a backbone's feature map (avg-pooled 256 channels for AlexNet pool5)."""
    num_classes = 1 if len(labels) == 2 and hidden < 0 else len(labels)
    params = {"in_features": in_features, "num_classes": num_classes, "pooling": pooling, "hidden": max(hidden, 0)}
    manifest = Manifest(kind="head", architecture="feature_head", params=params,
                        backbone=BackboneRef(backbone, backbone_version),
                        output=OutputSpec(shape=(num_classes,), labels=tuple(labels)))
    return Registry(root).publish(model, manifest, seeded_state("feature_head", params, seed), version=version)
