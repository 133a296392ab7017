"""A registry backbone's feature maps for training images, computed once through the serving code.

The backbone is built, loaded (sha256-checked safetensors) and run by ``BackboneRunner`` on a
``Device`` exactly as the server runs it, so a head trains on the very numbers it will be given
at serving time: no train/serve skew.
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

from featurizer.architectures.builders import build
from featurizer.inference.device import Device
from featurizer.inference.runner import BackboneRunner, FeatureOutput, Item
from featurizer.registry.manifest import Manifest, ManifestError
from featurizer.registry.registry import Registry, RegistryError, alias_chain, parse_target


def resolve(registry: Registry, name: str, option: str = "--backbone") -> tuple[str, int]:
    """'alexnet', 'alexnet@2' or an alias -> (model, version); no version = the highest published.
    Errors start with ``option``, the flag the name came from."""
    scan = registry.scan()
    model, version = parse_target(name)
    model, aliased = alias_chain(scan.aliases, model)  # the server's alias rules
    version = version or aliased
    versions = sorted(v for (m, v) in scan.versions if m == model)
    if not versions:
        raise RegistryError(f"{option}: model {name!r} is not in the registry {registry.root}")
    if version and version not in versions:
        raise RegistryError(f"{option}: model {model!r} has no version {version} (it has {versions})")
    return model, version or versions[-1]


def load_module(registry: Registry, model: str, version: int, device: Device) -> tuple[nn.Module, Manifest]:
    """Build the architecture and load its verified weights, as the server's model loader does."""
    manifest = registry.manifest(model, version)
    module = build(manifest.architecture, manifest.params)
    try:
        module.load_state_dict(registry.load_weights(model, version, manifest), strict=True)
    except RuntimeError as error:
        raise ManifestError(f"{model}/{version}: weights do not fit {manifest.architecture!r}: {error}") from None
    return device.prepare(module), manifest


def feature_maps(runner: BackboneRunner, images: torch.Tensor, batch_size: int = 32,
                 progress: bool = True) -> torch.Tensor:
    """uint8 ``[N, 3, H, W]`` (already resized for the backbone) -> its own output, unpooled."""
    output = FeatureOutput(None, "none")  # what a head module is given at serving time
    rows: list[torch.Tensor] = []
    for start in tqdm(range(0, len(images), batch_size), disable=not progress, desc="features", unit="batch"):
        for result in runner.run([Item(image, (output,)) for image in images[start:start + batch_size]]):
            if isinstance(result, BaseException):
                raise result
            rows.append(result[0])
    return torch.stack(rows)
