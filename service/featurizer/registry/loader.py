"""Weights into a module: the one place a manifest's architecture is built and its state loaded.

The server's version loader, publishing (which checks before writing that the server will load
what it writes) and training (which runs a backbone exactly as the server does) all call
``load_module``, so the three cannot drift apart in what they accept or how they say it failed.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from featurizer.architectures import ArchitectureError, build
from featurizer.registry.manifest import Manifest, ManifestError

DETAIL_LIMIT = 500  # torch's missing/unexpected key lists run to pages for a wrong layout


def load_module(manifest: Manifest, state: Mapping[str, torch.Tensor], where: str) -> nn.Module:
    """The manifest's architecture with ``state`` loaded (strict: every key, every shape), on the
    CPU, in training mode. Raises ManifestError starting with ``where`` when the manifest names an
    unknown builder or bad params, or when the weights do not fit."""
    try:
        module = build(manifest.architecture, manifest.params)
    except ArchitectureError as error:
        raise ManifestError(f"{where}: {error}") from None
    try:
        module.load_state_dict(dict(state), strict=True)
    except RuntimeError as error:
        detail = " ".join(str(error).split())
        raise ManifestError(f"{where}: weights do not fit architecture {manifest.architecture!r}: "
                            f"{detail[:DETAIL_LIMIT]}") from None
    return module
