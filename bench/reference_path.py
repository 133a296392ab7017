"""The model and preprocessing every baseline runs (limit, naive server, peers).

They are featurizer's own steps (``featurizer.inference.preprocessing``) and the demo registry's seeded
AlexNet ``features``, so every system computes the same 9216-float rows from the same bytes and
only the serving around them differs. The resize is featurizer's exact one (``decode_resize.resize_exact``:
bit-identical to torchvision's ``ImageClassification`` preset, and faster than the preset's own path
on large photos), so a baseline here is already faster than torchvision's preset would be.
``decode=DecodeMode.FAST`` adds featurizer's reduced-scale JPEG decode (a model's ``input.decode: fast``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from featurizer.demo import seeded_alexnet
from featurizer.inference.normalize import Normalizer
from featurizer.inference.preprocessing import ImageLimits, decode_for, probe, resize_for
from featurizer.registry.manifest import DecodeMode, InputSpec

SPEC = InputSpec()  # resize 256, centre crop 224: the demo manifest's input
LIMITS = ImageLimits(max_image_bytes=32 * 1024 * 1024, max_image_pixels=40_000_000)
_NORMALIZE = Normalizer(SPEC)


def load_features(channels_last: bool = True) -> torch.nn.Module:
    """AlexNet ``features`` with the demo weights, eval mode, in the chosen memory format."""
    model = seeded_alexnet().features.eval()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def preprocess(data: bytes, decode: DecodeMode = DecodeMode.EXACT) -> torch.Tensor:
    """JPEG bytes -> uint8 [3, 224, 224], exactly as featurizer does it for a model whose manifest
    says ``input.decode: <decode>`` (exact: torchvision's preset pixels)."""
    return resize_for(decode_for(probe(data, LIMITS), SPEC, decode), SPEC, LIMITS)


@torch.inference_mode()
def forward(model: torch.nn.Module, images: Sequence[torch.Tensor], channels_last: bool = True) -> torch.Tensor:
    """uint8 images -> float32 [N, 9216]: stack, normalise, features, flatten."""
    x = _NORMALIZE(torch.stack(list(images)))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return torch.flatten(model(x), 1)
