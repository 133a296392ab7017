"""Network architectures: weightless ``nn.Module`` builders looked up by a manifest's name.

The lowest layer: imports torch and torchvision only. One module per concept: ``registry`` (the
builder table), ``pooling`` (the ``Pooling`` set), ``layered`` (``LayeredFeatures``, the type of a
stack with named layers) and one module per architecture (``alexnet``, ``vgg``, ``largenet``,
``heads``), each registering its builders.

``Pooling`` and ``ArchitectureError`` import without torch (the CLI builds its choices from them).
``build``, ``list_builders``, ``register_builder`` and ``LayeredFeatures`` load on first use, after
the shipped architectures, so every builder is registered whoever asks first, and ``--help`` never
waits seconds for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from featurizer.architectures.pooling import Pooling, apply_pooling
from featurizer.architectures.registry import ArchitectureError

if TYPE_CHECKING:
    from featurizer.architectures.layered import LayeredFeatures
    from featurizer.architectures.registry import build, list_builders, register_builder

_ON_FIRST_USE = {"build": "registry", "list_builders": "registry", "register_builder": "registry",
                 "LayeredFeatures": "layered"}

__all__ = ["ArchitectureError", "LayeredFeatures", "Pooling", "apply_pooling", "build", "list_builders",
           "register_builder"]


def __getattr__(name: str) -> Any:
    if name not in _ON_FIRST_USE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from featurizer.architectures import alexnet, heads, largenet, vgg  # noqa: F401  (each registers its builders)

    value = getattr(importlib.import_module(f"{__name__}.{_ON_FIRST_USE[name]}"), name)
    globals()[name] = value  # once: later lookups are plain module attributes
    return value
