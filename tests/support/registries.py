"""Build small registries for tests: seeded weights, published through the real Registry API."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

import torch

from featurizer.architectures import build
from featurizer.demo import alexnet_features_manifest, features_state, seeded_alexnet
from featurizer.registry.manifest import BackboneRef, InputSpec, Manifest, OutputSpec
from featurizer.registry.presets import LARGENET_INPUT
from featurizer.registry.registry import Registry

NATIVE = InputSpec(mode="native", resize=None, height=None, width=None)


def seeded_state(architecture: str, params: dict, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build(architecture, params).state_dict()


@lru_cache(maxsize=4)
def seeded_features(seed: int) -> dict[str, torch.Tensor]:
    """The demo's seeded AlexNet ``features.*`` tensors (built once per seed: the classifier is big)."""
    return features_state(seeded_alexnet(seed))


def publish_alexnet(root: Path, model: str = "alexnet", *, layer: str = "pool5", pooling: str = "flatten",
                    input: InputSpec = InputSpec(), seed: int = 0, version: Optional[int] = None) -> int:
    """AlexNet `features` cut after ``layer`` with the demo's seeded weights (torchvision names)."""
    manifest = alexnet_features_manifest(layer=layer, pooling=pooling, input=input, shape=())
    cut = build("alexnet_features", {"layer": layer}).state_dict().keys()
    state = {k: v for k, v in seeded_features(seed).items() if k in cut}
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


def flip_byte(path: Path, offset: int = -1) -> None:
    """Corrupt a file in place: one byte inverted (the last one unless ``offset`` is given)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def publish_corrupt_alexnet(root: Path, model: str, version: int, scratch: Path, **kwargs) -> Path:
    """A version whose weights file has one flipped byte, renamed into place complete (as a careless
    copy would leave it). Returns the bad weights file's path."""
    publish_alexnet(scratch, model, version=version, **kwargs)
    flip_byte(scratch / model / str(version) / "weights.safetensors")
    (root / model).mkdir(parents=True, exist_ok=True)
    (scratch / model / str(version)).rename(root / model / str(version))
    return root / model / str(version) / "weights.safetensors"


def save_torchvision_state_dict(path: Path, seed: int = 0) -> Path:
    """``torch.save`` of a seeded torchvision AlexNet state dict, as a user would save real weights."""
    torch.save(seeded_alexnet(seed).state_dict(), path)
    return path


def place_version(root: Path, model: str, version: int, build: Callable[[Path], None]) -> Path:
    """A version directory made by ``build(directory)`` in a hidden temporary directory of the model,
    then renamed into place whole, as a publisher does (a scan never sees it half made)."""
    (root / model).mkdir(parents=True, exist_ok=True)
    scratch = root / model / f".tmp-test-{version}"
    scratch.mkdir()
    build(scratch)
    return scratch.rename(root / model / str(version))


def copy_version_files(source: Path) -> Callable[[Path], None]:
    """A ``place_version`` builder copying ``source``'s model.json and weights (same sha256)."""
    def build(directory: Path) -> None:
        for name in ("model.json", "weights.safetensors"):
            shutil.copyfile(source / name, directory / name)
    return build
