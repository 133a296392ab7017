"""A registry backbone's feature maps for training images, computed once through the serving code.

The backbone is built, loaded (sha256-checked safetensors) and run by ``BackboneRunner`` on a
``Device`` exactly as the server runs it, so a head trains on the very numbers it will be given
at serving time: no train/serve skew.
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

from featurizer.architectures import Pooling
from featurizer.inference.device import Device
from featurizer.inference.runner import BackboneRunner, FeatureOutput, Item
from featurizer.registry import loader
from featurizer.registry.manifest import Manifest
from featurizer.registry.names import parse_target, resolve_name
from featurizer.registry.registry import Registry
from featurizer.settings import InvalidOption


def resolve(registry: Registry, name: str, option: str = "backbone") -> tuple[str, int]:
    """'alexnet', 'alexnet@2' or an alias -> (model, version); no version = the highest published.
    Errors are ``InvalidOption`` naming ``option``, the field the name came from."""
    scan = registry.scan()
    model, version = resolve_name(scan.aliases, *parse_target(name))  # the server's alias rules
    versions = sorted(v for (m, v) in scan.versions if m == model)
    if not versions:
        raise InvalidOption(option, f"model {name!r} is not in the registry {registry.root}")
    if version and version not in versions:
        raise InvalidOption(option, f"model {model!r} has no version {version} (it has {versions})")
    return model, version or versions[-1]


def load_module(registry: Registry, model: str, version: int, device: Device) -> tuple[nn.Module, Manifest]:
    """Build the architecture and load its verified weights with the server's own loader."""
    manifest = registry.manifest(model, version)
    state = registry.load_weights(model, version, manifest)
    return device.prepare(loader.load_module(manifest, state, f"{model}/{version}")), manifest


def feature_maps(runner: BackboneRunner, images: torch.Tensor, batch_size: int = 32,
                 progress: bool = True) -> torch.Tensor:
    """uint8 ``[N, 3, H, W]`` (already resized for the backbone) -> its own output, unpooled."""
    output = FeatureOutput(None, Pooling.NONE)  # what a head module is given at serving time
    rows: list[torch.Tensor] = []
    for start in tqdm(range(0, len(images), batch_size), disable=not progress, desc="features", unit="batch"):
        for result in runner.run([Item(image, (output,)) for image in images[start:start + batch_size]]):
            if isinstance(result, BaseException):
                raise result
            rows.append(result[0])
    return torch.stack(rows)
