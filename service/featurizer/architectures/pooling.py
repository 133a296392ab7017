"""How a feature map ``[N, C, H, W]`` becomes a row: the one closed set of pooling names.

Manifests, request options, the CLI's choices and heads all use this enum, so a new pooling is
added here once (and in featurizer.v1's ``Pooling`` for the wire). Importing it costs no torch:
argparse builds its choices from it while ``--help`` stays instant.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

from featurizer.architectures.registry import ArchitectureError

if TYPE_CHECKING:
    import torch


class Pooling(StrEnum):
    FLATTEN = "flatten"   # [N, C*H*W]: every position kept
    AVG = "avg"           # [N, C]: global average
    MAX = "max"           # [N, C]: global maximum
    NONE = "none"         # [N, C, H, W]: the map as is

    @classmethod
    def parse(cls, value: str, where: str = "pooling") -> Pooling:
        """``value`` as a member; anything else raises ArchitectureError naming the choices."""
        try:
            return cls(value)
        except ValueError:
            raise ArchitectureError(f"{where}: expected one of {', '.join(cls)}, got {value!r}") from None


# Poolings that give one row per image (``none`` keeps the map): what a head's classifier takes.
ROW_POOLINGS = (Pooling.FLATTEN, Pooling.AVG, Pooling.MAX)


def apply_pooling(x: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """[N, C, H, W] -> [N, C*H*W] (flatten), [N, C] (avg/max) or unchanged (none)."""
    if pooling == Pooling.FLATTEN:
        return x.flatten(1)
    if pooling == Pooling.AVG:
        return x.mean(dim=(2, 3))
    if pooling == Pooling.MAX:
        return x.amax(dim=(2, 3))
    if pooling == Pooling.NONE:
        return x
    raise ArchitectureError(f"unknown pooling {pooling!r}; expected one of {', '.join(Pooling)}")
