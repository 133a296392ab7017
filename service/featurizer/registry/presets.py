"""Input presets of the shipped architectures, as the ``InputSpec`` their manifests carry.

The numbers live with each network in ``featurizer.architectures`` (the lowest layer, which knows
no manifests); the specs are built here, once, for whoever writes such a manifest (training,
test registries, the benchmarks).
"""

from __future__ import annotations

from featurizer.architectures import largenet
from featurizer.registry.manifest import InputMode, InputSpec

# LargeNet: resized to 32x32 (no crop), pixels scaled to [-1, 1].
LARGENET_INPUT = InputSpec(mode=InputMode.RESIZE, resize=None, height=largenet.INPUT_SIZE, width=largenet.INPUT_SIZE,
                           mean=largenet.INPUT_MEAN, std=largenet.INPUT_STD)
