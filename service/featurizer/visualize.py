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
from torchvision.utils import make_grid

from featurizer.architectures import ArchitectureError, LayeredFeatures
from featurizer.inference.device import Device
from featurizer.inference.normalize import Normalizer
from featurizer.inference.preprocessing import ImageLimits, decode, resize_for
from featurizer.registry.manifest import InputSpec
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
    """uint8 ``[N, h, w, 3]`` tiles -> one RGB image, row-major, separated by PAD background pixels
    (torchvision's ``make_grid`` with ``grid_shape``'s columns)."""
    _, columns = grid_shape(len(tiles))
    grid = make_grid(torch.from_numpy(tiles).permute(0, 3, 1, 2), nrow=columns, padding=PAD, pad_value=BACKGROUND)
    return Image.fromarray(grid.permute(1, 2, 0).numpy(), "RGB")


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
def layer_maps(module: LayeredFeatures, spec: InputSpec, image: bytes, layer: int, where: str) -> torch.Tensor:
    """One image through the server's preprocessing, the stack's output after ``layer``: ``[C, H, W]``."""
    pixels = resize_for(decode(image, _LIMITS, where=where), spec).unsqueeze(0)
    return module.forward_taps(Normalizer(spec)(pixels), {layer})[layer][0].float()


def draw(registry: Path, model: str, output: Path, image: Optional[Path] = None, layer: Optional[str] = None,
         filters: bool = False) -> tuple[int, Image.Image]:
    """Write the PNG; returns (tiles drawn, the picture). ``layer`` None = the model's first layer."""
    reg = Registry(registry)
    name, version = resolve(reg, model, option="model")
    device = Device.create("cpu", channels_last="off")
    try:
        module, manifest = load_module(reg, name, version, device)
    finally:
        device.close()
    if manifest.kind != "features" or not isinstance(module, LayeredFeatures):
        raise VisualizeError(f"--model: {model!r} is a {manifest.kind} model ({manifest.architecture}); "
                             "visualize draws layered features models such as alexnet_features or vgg11_features")
    if filters:
        tiles = kernels_rgb(first_conv(module, model).weight.detach().cpu())
    else:
        if image is None:
            raise VisualizeError("IMAGE: an image file is needed to draw feature maps (or pass --filters)")
        try:
            index = module.resolve_layer(layer if layer is not None else 0)  # the model's own layer names
        except ArchitectureError as error:
            raise VisualizeError(f"--layer: {error}") from None
        tiles = colourise(layer_maps(module, manifest.input, Path(image).read_bytes(), index, str(image)))
    picture = tile_grid(upscale(tiles))
    picture.save(output, format="PNG")
    return len(tiles), picture
