"""The registry every system serves: the shipped demo AlexNet, the same weights decoding JPEGs at a
reduced scale, and a seeded LargeNet classifier."""

from __future__ import annotations

from pathlib import Path

import torch

from featurizer.architectures import build
from featurizer.demo import alexnet_features_manifest, features_state, init_demo, seeded_alexnet
from featurizer.registry.manifest import DecodeMode, InputSpec, Manifest, OutputSpec
from featurizer.registry.presets import LARGENET_INPUT

LARGENET_LABELS = ("negative", "positive")
ALEXNET_FAST = "alexnet_fast"  # the demo AlexNet with input.decode: fast (the phone photos' fast rows)


def build_registry(root: Path, seed: int = 0) -> Path:
    """``alexnet`` (demo weights, 224x224 -> 9216), ``alexnet_fast`` (the same weights and input but
    ``input.decode: fast``) and ``largenet`` (32x32 -> 2 classes)."""
    registry = init_demo(root)
    if not (root / ALEXNET_FAST).exists():
        manifest = alexnet_features_manifest(input=InputSpec(decode=DecodeMode.FAST))
        registry.publish(ALEXNET_FAST, manifest, features_state(seeded_alexnet()), version=1)
    if not (root / "largenet").exists():
        params = {"num_classes": len(LARGENET_LABELS)}
        torch.manual_seed(seed)
        state = build("largenet", params).state_dict()
        manifest = Manifest(kind="classifier", architecture="largenet", params=params, input=LARGENET_INPUT,
                            output=OutputSpec(shape=(len(LARGENET_LABELS),), labels=LARGENET_LABELS))
        registry.publish("largenet", manifest, state, version=1)
    return root
