"""The builder table: architecture name (a manifest's ``architecture``) -> keyword-only builder.

Like torchvision's ``register_model``: a duplicate name is refused, ``list_builders`` is sorted,
and errors say what was expected and what arrived. The table lives here, beside nothing else, so
each architecture module registers itself with one decorator. Import ``build`` and friends from
``featurizer.architectures``, which loads the shipped architectures (and so registers them) first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # torch-free at import: argparse's choices come from this package too
    from torch import nn

Builder = Callable[..., "nn.Module"]
B = TypeVar("B", bound=Builder)
_BUILDERS: dict[str, Builder] = {}


class ArchitectureError(ValueError):
    """An architecture, parameter or layer that does not exist; the message says what was expected
    and what arrived. Callers add where the value came from (a manifest field, a request option)."""


def register_builder(name: str) -> Callable[[B], B]:
    """Decorator: make ``fn`` the builder a manifest names as ``architecture: name``."""
    def wrap(fn: B) -> B:
        if name in _BUILDERS:
            raise ValueError(f"builder {name!r} is already registered")
        _BUILDERS[name] = fn
        return fn
    return wrap


def list_builders() -> list[str]:
    return sorted(_BUILDERS)


def build(architecture: str, params: Mapping[str, Any]) -> nn.Module:
    """The weightless module a manifest describes; unknown names or bad params raise ArchitectureError."""
    if architecture not in _BUILDERS:
        raise ArchitectureError(f"unknown architecture {architecture!r}; known: {', '.join(list_builders())}")
    try:
        return _BUILDERS[architecture](**params)
    except TypeError as error:
        raise ArchitectureError(f"bad params for {architecture!r}: {error}") from None
