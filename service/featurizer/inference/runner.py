"""The tensor path of one batch: stack to NCHW once -> device -> normalise -> model -> rows.

``BackboneRunner`` is what a ``Batcher`` executes. Each item asks for outputs: the backbone's
features at some layer and pooling, and/or the output of a head that sits on this backbone.
The backbone runs once per batch whatever mix of outputs its items ask for; heads then run on
just the rows that asked for them. Images of different shapes (``native`` inputs) are bucketed
and never share a tensor.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional, Protocol, Union

import torch
from torch import nn

from featurizer.architectures import LayeredFeatures, Pooling, apply_pooling
from featurizer.inference.device import Device
from featurizer.inference.errors import InferenceFailed
from featurizer.inference.normalize import Normalizer
from featurizer.registry.manifest import InputSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureOutput:
    """Backbone output after layer ``layer`` (None = the model's own output), pooled."""

    layer: Optional[int]
    pooling: Pooling


@dataclass(frozen=True, eq=False)
class HeadOutput:
    """The output of a head module applied to the backbone's own output."""

    key: str
    module: nn.Module


Output = Union[FeatureOutput, HeadOutput]


@dataclass(eq=False)
class Item:
    """One image ready for the device: uint8 [3, H, W], or float32 [3, H, W] already normalised."""

    tensor: torch.Tensor
    outputs: tuple[Output, ...]


class InferenceObserver(Protocol):
    def on_forward(self, size: int, seconds: float) -> None: ...


class BackboneRunner:
    """Runs batches of one loaded backbone on its device's inference thread."""

    def __init__(self, name: str, module: nn.Module, device: Device, spec: InputSpec,
                 observer: Optional[InferenceObserver] = None) -> None:
        self.name = name
        self.module = module
        self.device = device
        self.observer = observer
        self.forward_passes = 0
        self._normalize = Normalizer(spec, device.torch_device)

    async def __call__(self, items: list[Item]) -> list[Union[tuple[torch.Tensor, ...], BaseException]]:
        return await asyncio.get_running_loop().run_in_executor(self.device.executor, self.run, items)

    def run(self, items: Sequence[Item]) -> list[Union[tuple[torch.Tensor, ...], BaseException]]:
        """Synchronous batch execution (inference thread). A failing shape bucket fails its own items."""
        buckets: dict[tuple, list[int]] = defaultdict(list)
        for index, item in enumerate(items):
            buckets[(item.tensor.dtype, tuple(item.tensor.shape))].append(index)
        results: list = [None] * len(items)
        for indices in buckets.values():
            group = [items[i] for i in indices]
            rows: Sequence[Union[tuple[torch.Tensor, ...], BaseException]]
            try:
                rows = self._run_group(group)
            except Exception:
                log.exception("forward pass of %d images on %s failed", len(group), self.name)
                error = InferenceFailed(f"inference failed for model {self.name}; the server log has details")
                rows = [error] * len(group)
            for i, row in zip(indices, rows, strict=True):
                results[i] = row
        return results

    def _run_group(self, group: list[Item]) -> list[tuple[torch.Tensor, ...]]:
        started = time.perf_counter()
        wanted: dict[Output, list[int]] = defaultdict(list)  # output -> rows of the group asking for it
        for i, item in enumerate(group):
            for output in item.outputs:
                wanted[output].append(i)
        with torch.inference_mode(), self.device.autocast():
            x = self.device.upload([item.tensor for item in group])  # NCHW, once, in the model's memory format
            if x.dtype == torch.uint8:
                x = self._normalize(x)  # on the device; keeps the memory format
            outs = self._forward(x, wanted)
            host = {o: self.device.download(self._compute(o, outs, rows, len(group))) for o, rows in wanted.items()}
        self.forward_passes += 1
        if self.observer is not None:
            self.observer.on_forward(len(group), time.perf_counter() - started)
        position = {o: {row: k for k, row in enumerate(rows)} for o, rows in wanted.items()}
        return [tuple(host[o][position[o][i]] for o in item.outputs) for i, item in enumerate(group)]

    def _forward(self, x: torch.Tensor, wanted: dict[Output, list[int]]) -> dict[Optional[int], torch.Tensor]:
        module = self.module
        if not isinstance(module, LayeredFeatures):
            return {None: module(x)}
        taps = {module.cut} | {o.layer for o in wanted if isinstance(o, FeatureOutput) and o.layer is not None}
        outs: dict[Optional[int], torch.Tensor] = {k: v for k, v in module.forward_taps(x, taps).items()}
        outs[None] = outs[module.cut]
        return outs

    @staticmethod
    def _compute(output: Output, outs: dict, rows: list[int], size: int) -> torch.Tensor:
        """The output for the rows that asked for it (all rows, for features)."""
        base = outs[output.layer] if isinstance(output, FeatureOutput) else outs[None]
        if len(rows) != size:
            base = base[rows]
        if isinstance(output, FeatureOutput):
            return apply_pooling(base, output.pooling)
        return output.module(base)
