"""``featurizer visualize``: what a convolution stack sees, as a grid of tiles (one per channel).

Feature maps of one layer for one image, or (``--filters``) the first convolution's kernels as
RGB tiles. The model comes from the registry and the image goes through the server's own decoder,
resize and normalisation, so the pictures show exactly what serving computes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image
from torch import nn

from featurizer.architectures.builders import ALEXNET_LAYER_NAMES, resolve_alexnet_layer
from featurizer.inference.device import Device
from featurizer.registry.manifest import ManifestError
from featurizer.inference.preprocessing import ImageLimits, decode, normalize_batch, resize_for
from featurizer.registry.registry import Registry
from featurizer.training.backbone import load_module, resolve

PAD = 2                  # pixels between tiles (and around the grid), in BACKGROUND
BACKGROUND = 255         # white: never produced by the viridis colormap, so tiles stand out
MIN_TILE = 48            # small maps are scaled up (nearest neighbour) to at least this many pixels
_LIMITS = ImageLimits(max_image_bytes=256 << 20, max_image_pixels=256 << 20)


class VisualizeError(ValueError):
    """A model, layer or image that cannot be drawn; the message names the option at fault."""


def grid_shape(tiles: int) -> tuple[int, int]:
    """(rows, columns) of a near-square grid holding ``tiles`` tiles."""
    columns = math.ceil(math.sqrt(tiles))
    return math.ceil(tiles / columns), columns


def tile_grid(tiles: np.ndarray) -> Image.Image:
    """uint8 ``[N, h, w, 3]`` tiles -> one RGB image, row-major, separated by PAD background pixels."""
    count, height, width, _ = tiles.shape
    rows, columns = grid_shape(count)
    canvas = np.full((rows * (height + PAD) + PAD, columns * (width + PAD) + PAD, 3), BACKGROUND, np.uint8)
    for index, tile in enumerate(tiles):
        top = PAD + (index // columns) * (height + PAD)
        left = PAD + (index % columns) * (width + PAD)
        canvas[top:top + height, left:left + width] = tile
    return Image.fromarray(canvas, "RGB")


def upscale(tiles: np.ndarray) -> np.ndarray:
    """Nearest-neighbour enlarge ``[N, h, w, ...]`` tiles by a whole factor up to MIN_TILE pixels."""
    factor = max(1, math.ceil(MIN_TILE / min(tiles.shape[1:3])))
    return tiles.repeat(factor, axis=1).repeat(factor, axis=2)


def colourise(maps: torch.Tensor) -> np.ndarray:
    """``[C, H, W]`` activations -> uint8 ``[C, H, W, 3]`` viridis, each channel scaled to its own range."""
    from matplotlib import colormaps

    flat = maps.reshape(len(maps), -1)
    low, high = flat.min(1).values.view(-1, 1, 1), flat.max(1).values.view(-1, 1, 1)
    scaled = ((maps - low) / (high - low).clamp_min(1e-12)).numpy()
    return (colormaps["viridis"](scaled)[..., :3] * 255).round().astype(np.uint8)


def kernels_rgb(weight: torch.Tensor) -> np.ndarray:
    """First-layer kernels ``[C, 3, k, k]`` -> uint8 ``[C, k, k, 3]``, each kernel scaled to its own range."""
    flat = weight.reshape(len(weight), -1)
    low, high = flat.min(1).values.view(-1, 1, 1, 1), flat.max(1).values.view(-1, 1, 1, 1)
    scaled = (weight - low) / (high - low).clamp_min(1e-12)
    return (scaled.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def first_conv(module: nn.Module, model: str) -> nn.Conv2d:
    conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None or conv.in_channels != 3:
        raise VisualizeError(f"--filters: model {model!r} has no first convolution on RGB input")
    return conv


@torch.inference_mode()
def layer_maps(module: nn.Module, spec, image: bytes, layer: int, where: str) -> torch.Tensor:
    """One image through the server's preprocessing, the stack's output after ``layer``: ``[C, H, W]``."""
    pixels = resize_for(decode(image, _LIMITS, where=where), spec).unsqueeze(0)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    return module.forward_taps(normalize_batch(pixels, mean, std), {layer})[layer][0].float()


def draw(registry: Path, model: str, output: Path, image: Optional[Path] = None, layer: str = "conv1",
         filters: bool = False) -> tuple[int, Image.Image]:
    """Write the PNG; returns (tiles drawn, the picture)."""
    reg = Registry(registry)
    name, version = resolve(reg, model, option="--model")
    device = Device.create("cpu", channels_last="off")
    try:
        module, manifest = load_module(reg, name, version, device)
    finally:
        device.close()
    if manifest.kind != "features" or not hasattr(module, "forward_taps"):
        raise VisualizeError(f"--model: {model!r} is a {manifest.kind} model ({manifest.architecture}); "
                             "visualize draws layered features models such as alexnet_features")
    if filters:
        tiles = kernels_rgb(first_conv(module, model).weight.detach().cpu())
    else:
        if image is None:
            raise VisualizeError("IMAGE: an image file is needed to draw feature maps (or pass --filters)")
        try:
            index = resolve_alexnet_layer(layer)
        except ManifestError as error:
            raise VisualizeError(f"--layer: {error}") from None
        if index > module.cut:
            raise VisualizeError(f"--layer: {layer!r} comes after {name}@{version}'s last layer "
                                 f"({ALEXNET_LAYER_NAMES[module.cut]})")
        tiles = colourise(layer_maps(module, manifest.input, Path(image).read_bytes(), index, str(image)))
    picture = tile_grid(upscale(tiles))
    picture.save(output, format="PNG")
    return len(tiles), picture
