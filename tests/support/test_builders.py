"""Test-only architectures, registered into the real builder table (never shipped in a registry
a user sees): a model whose forward blocks until released, and one that raises."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from featurizer.architectures import list_builders, register_builder
from featurizer.registry.manifest import InputSpec, Manifest, OutputSpec
from featurizer.registry.registry import Registry

GATES: dict[str, "Gate"] = {}


class Gate:
    """Lets a test hold a forward pass: ``entered`` is set when it starts, it waits for ``release``."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0


class GatedNet(nn.Module):
    def __init__(self, gate: str) -> None:
        super().__init__()
        self.gate = gate
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = GATES.get(self.gate)  # install the Gate after the server loaded (warm-up runs forward too)
        if gate is not None:
            gate.calls += 1
            gate.entered.set()
            gate.release.wait(60)
        return x.mean(dim=(2, 3)) * self.scale  # [N, 3]


class RaisingNet(nn.Module):
    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after  # forward passes that succeed first (warm-up needs one)
        self.calls = 0
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > self.after:
            raise RuntimeError("test model: forward failed on purpose")
        return x.mean(dim=(2, 3)) * self.scale


def _register() -> None:
    if "test_gated" not in list_builders():
        register_builder("test_gated")(lambda *, gate="default": GatedNet(gate))
        register_builder("test_raising")(lambda *, after=1: RaisingNet(after))


_register()
SMALL_INPUT = InputSpec(mode="resize", resize=None, height=8, width=8)


def publish_test_model(root: Path, model: str, architecture: str, params: dict, version: Optional[int] = None) -> int:
    """Publish a test architecture (3 outputs = per-channel means) with trivial weights."""
    manifest = Manifest(kind="features", architecture=architecture, params=params, input=SMALL_INPUT,
                        output=OutputSpec(shape=(3,)))
    return Registry(root).publish(model, manifest, {"scale": torch.ones(1)}, version=version)
