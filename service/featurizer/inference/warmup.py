"""Before a version serves: real forward passes that measure its output shape, and the checks of
that shape against the manifest. A version that fails here is FAILED, never half-served."""

from __future__ import annotations

import asyncio

import torch
from torch import nn

from featurizer.architectures import LayeredFeatures, Pooling
from featurizer.inference.device import Device
from featurizer.inference.runner import BackboneRunner, Item, Output
from featurizer.registry.manifest import Manifest, ManifestError

WARMUP_SIZE = 224
NATIVE_SIZES = ((WARMUP_SIZE, WARMUP_SIZE), (WARMUP_SIZE + 32, WARMUP_SIZE + 64))


async def warm_up(runner: BackboneRunner, manifest: Manifest, output: Output) -> tuple[int, ...]:
    """Forward passes of ``output`` on ``runner``'s device; returns the per-image output shape.
    ``manifest`` is the backbone's. A native-size model runs at two sizes: dimensions that change
    with the input are reported as -1."""
    sizes = [manifest.input.size] if manifest.input.size else NATIVE_SIZES
    shapes = []
    for h, w in sizes:
        dummy = Item(torch.zeros(3, h, w, dtype=torch.uint8), (output,))
        result = await asyncio.get_running_loop().run_in_executor(runner.device.executor, runner.run, [dummy])
        if isinstance(result[0], BaseException):
            raise ManifestError(f"warm-up forward pass failed on a {h}x{w} input (wrong shapes?)")
        shapes.append(tuple(result[0][0].shape))
    return tuple(d if all(s[i] == d for s in shapes) else -1 for i, d in enumerate(shapes[0]))


def min_side(module: nn.Module, device: Device) -> int:
    """Smallest square input a native-size network accepts (binary search; run on the device thread)."""
    low, high = 1, 512
    with torch.inference_mode():
        while low < high:
            mid = (low + high) // 2
            try:
                module(torch.zeros(1, 3, mid, mid, device=device.torch_device))
                high = mid
            except RuntimeError:
                low = mid + 1
    return low


def own_pooling(module: nn.Module) -> Pooling:
    """The pooling a layered feature stack applies to its own output (none for other modules)."""
    return module.pooling if isinstance(module, LayeredFeatures) else Pooling.NONE


def check_output(manifest: Manifest, shape: tuple[int, ...]) -> None:
    """The measured per-image shape must match the manifest's promise (-1 matches any size), and a
    classifier's labels its output units."""
    declared = manifest.output.shape
    if declared and (len(declared) != len(shape) or any(d not in (-1, m) for d, m in zip(declared, shape, strict=True))):
        raise ManifestError(f"'output.shape' is {list(declared)} but the model produces {list(shape)}")
    labels = manifest.output.labels
    if manifest.kind == "features" or not labels:
        return
    units = shape[-1] if shape else 0
    if not (units == len(labels) or (units == 1 and len(labels) == 2)):
        raise ManifestError(f"model has {units} outputs but {len(labels)} labels "
                            "(a binary head has 1 output and 2 labels)")
