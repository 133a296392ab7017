"""``LayeredFeatures``: a convolution stack whose layers have names, cut after one of them.

The capability the request path needs from a backbone (pick a layer by name, tap several layers in
one pass, the pooling of its own output) is this one type, checked with ``isinstance``. It holds its
layer names as data, the way torchvision's ``IntermediateLayerGetter`` holds its ``return_layers``,
so a new architecture is a builder that hands over its layers and their names; engine, runner,
warm-up and visualize never change for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from featurizer.architectures.pooling import Pooling
from featurizer.architectures.registry import ArchitectureError


def layer_index(names: Sequence[str], layer: str | int, last: int | None = None) -> int:
    """'conv3', 6 or '6' -> an index into ``names``, at most ``last`` (default: the last name).
    Errors name the valid layers."""
    last = len(names) - 1 if last is None else last
    valid = f"expected one of {', '.join(names[: last + 1])} or an index 0..{last}"
    if isinstance(layer, str) and layer in names:
        index = names.index(layer)
    else:
        try:
            index = int(layer)
        except (TypeError, ValueError):
            raise ArchitectureError(f"unknown layer {layer!r}; {valid}") from None
        if not 0 <= index < len(names):
            raise ArchitectureError(f"layer index {index} is outside the stack's layers; {valid}")
    if index > last:
        raise ArchitectureError(f"{layer!r} comes after this model's last layer, {names[last]} ({last}); {valid}")
    return index


def materialize(layers: Sequence[nn.Module], init: Callable[[nn.Module], None]) -> list[nn.Module]:
    """Layers built on the meta device (free: no memory, no initialisation) -> the same layers on
    the CPU, each submodule passed to ``init``. Builders use it to keep just the prefix of a
    torchvision network they need, without paying for its classifier (58M parameters in AlexNet,
    123M in VGG-11)."""
    stack = nn.Sequential(*layers).to_empty(device="cpu")
    for module in stack.modules():
        init(module)
    return list(stack)


class LayeredFeatures(nn.Module):
    """``layers`` (the stack up to and including layer ``cut``) under ``features``, so state-dict
    keys are torchvision's (``features.0.weight`` ...). ``names`` name every layer of the full
    stack, also those after the cut, so a request for one of them gets a clear answer."""

    def __init__(self, layers: Sequence[nn.Module], names: Sequence[str], *, cut: int,
                 pooling: Pooling) -> None:
        super().__init__()
        if len(set(names)) != len(names):
            raise ValueError(f"layer names must be unique, got {list(names)}")
        if len(layers) != cut + 1 or not 0 <= cut < len(names):
            raise ValueError(f"a stack cut after layer {cut} of {len(names)} needs {cut + 1} layers, got {len(layers)}")
        self.features = nn.Sequential(*layers)
        self.layer_names: tuple[str, ...] = tuple(names)
        self.cut = cut
        self.pooling = Pooling(pooling)

    @property
    def layers(self) -> dict[str, int]:
        """Name -> index of every layer this model can return (up to its cut)."""
        return {name: index for index, name in enumerate(self.layer_names[: self.cut + 1])}

    @property
    def last_layer(self) -> str:
        return self.layer_names[self.cut]

    def resolve_layer(self, layer: str | int) -> int:
        """A layer name or index of this model -> its index; unknown layers and layers after the
        cut raise ArchitectureError naming the valid ones."""
        return layer_index(self.layer_names, layer, self.cut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_taps(self, x: torch.Tensor, taps: set[int]) -> dict[int, torch.Tensor]:
        """One pass through the stack, keeping the output after each layer index in ``taps``.
        A tap that more layers will follow is cloned: torchvision's ReLUs work in place."""
        outside = sorted(t for t in taps if not 0 <= t <= self.cut)
        if outside:
            raise ArchitectureError(f"layer indices {outside} are outside this model's layers 0..{self.cut}")
        out: dict[int, torch.Tensor] = {}
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in taps:
                out[index] = x if len(out) + 1 == len(taps) else x.clone()
            if len(out) == len(taps):
                break
        return out
