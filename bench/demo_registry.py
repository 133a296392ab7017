"""The registry every system serves: the shipped demo AlexNet plus a seeded LargeNet classifier."""

from __future__ import annotations

from pathlib import Path

import torch

from featurizer.architectures import build
from featurizer.demo import init_demo
from featurizer.registry.manifest import Manifest, OutputSpec
from featurizer.registry.presets import LARGENET_INPUT

LARGENET_LABELS = ("negative", "positive")


def build_registry(root: Path, seed: int = 0) -> Path:
    """``alexnet`` (demo weights, 224x224 -> 9216) and ``largenet`` (32x32 -> 2 classes)."""
    registry = init_demo(root)
    if not (root / "largenet").exists():
        params = {"num_classes": len(LARGENET_LABELS)}
        torch.manual_seed(seed)
        state = build("largenet", params).state_dict()
        manifest = Manifest(kind="classifier", architecture="largenet", params=params, input=LARGENET_INPUT,
                            output=OutputSpec(shape=(len(LARGENET_LABELS),), labels=LARGENET_LABELS))
        registry.publish("largenet", manifest, state, version=1)
    return root
