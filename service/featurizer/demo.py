"""The demo registry: seeded random AlexNet weights in torchvision's layout, so the first run
needs no download. (No real ImageNet weights are available offline; see ``registry
import-torchvision`` for them on a connected machine.)"""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.models import alexnet as tv_alexnet

from .manifest import InputSpec, Manifest, OutputSpec
from .registry import Registry

DEMO_SEED = 0


def seeded_alexnet(seed: int = DEMO_SEED) -> torch.nn.Module:
    """torchvision's AlexNet with its default initialisation under a fixed seed."""
    torch.manual_seed(seed)
    return tv_alexnet(weights=None)


def alexnet_features_manifest(layer: str = "pool5", pooling: str = "flatten",
                              input: InputSpec = InputSpec(), shape: tuple[int, ...] = (9216,)) -> Manifest:
    return Manifest(kind="features", architecture="alexnet_features",
                    params={"layer": layer, "pooling": pooling}, input=input, output=OutputSpec(shape=shape),
                    description="torchvision AlexNet `features` (seeded demo weights)")


def features_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Only the ``features.*`` tensors, under torchvision's names."""
    return {k: v for k, v in model.state_dict().items() if k.startswith("features.")}


def init_demo(root: Path, seed: int = DEMO_SEED) -> Registry:
    """Write the demo registry: ``alexnet`` (features, 224x224 -> 9216) and aliases."""
    registry = Registry(root)
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "alexnet").exists():
        registry.publish("alexnet", alexnet_features_manifest(), features_state(seeded_alexnet(seed)), version=1)
    registry.set_alias("alexnet-pool5", "alexnet")
    return registry
