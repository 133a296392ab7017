"""Mean/std normalisation, written once: serving, training, visualize and the benchmarks all use
``Normalizer``, so a model never sees numbers at serving time that it was not trained on."""

from __future__ import annotations

from typing import Optional

import torch

from featurizer.registry.manifest import InputSpec


class Normalizer:
    """uint8 NCHW pixels -> float NCHW ``(x / 255 - mean) / std`` with an ``InputSpec``'s mean and std.

    The mean/std tensors are made once, on ``device``, so a batch is normalised where it already
    is (on the GPU after a uint8 upload: 4x less traffic than float32) and keeps its memory format."""

    def __init__(self, spec: InputSpec, device: Optional[torch.device] = None) -> None:
        self.mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.float().div_(255.0).sub_(self.mean).div_(self.std)
