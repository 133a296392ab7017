"""Image bytes or raw tensors -> one uint8 (or preprocessed float32) CHW tensor per image.

Pure functions; ``preparation.py`` decides which thread runs them. Decoding happens once, to uint8;
resizing and cropping stay in uint8 (antialiased, exactly torchvision's ``ImageClassification``
preset); scaling to [0, 1] and mean/std normalisation happen later, on the device, per batch.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.functional as TF  # the functions ImageClassification presets use
from PIL import Image, ImageOps
from torchvision.io import ImageReadMode, decode_jpeg

from .errors import InvalidArgument
from .manifest import InputSpec

Image.MAX_IMAGE_PIXELS = None  # we enforce our own limit before decoding, with a clear status
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
)
SUPPORTED = "JPEG, PNG, WebP, BMP, TIFF, GIF"


@dataclass(frozen=True)
class ImageLimits:
    max_image_bytes: int
    max_image_pixels: int


def sniff_format(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return name
    return None


@dataclass(frozen=True)
class Probe:
    """An encoded image whose header has been read: format and size known, pixels not decoded."""

    kind: str
    width: int
    height: int
    pil: Image.Image
    data: bytes


def probe(data: bytes, limits: ImageLimits, where: str = "image") -> Probe:
    """Read the header only (tens of microseconds): refuses empty, oversized and unknown images
    and decompression bombs before any pixel is decoded."""
    if len(data) == 0:
        raise InvalidArgument(f"{where}: empty image bytes")
    if len(data) > limits.max_image_bytes:
        raise InvalidArgument(f"{where}: {len(data)} bytes is above the limit of {limits.max_image_bytes} bytes")
    kind = sniff_format(data)
    if kind is None:
        raise InvalidArgument(f"{where}: not a supported image format ({SUPPORTED})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pil = Image.open(io.BytesIO(data))
    except Exception as error:
        raise InvalidArgument(f"{where}: cannot decode {kind} data ({type(error).__name__})") from None
    width, height = pil.size
    _check_pixels(width, height, limits, where)
    return Probe(kind, width, height, pil, data)


def decode_probed(image: Probe, where: str = "image") -> torch.Tensor:
    """A probed image -> uint8 RGB [3, H, W]."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if image.kind == "JPEG" and image.pil.mode in ("RGB", "L"):
                return _decode_jpeg(image.data, where)
            return _decode_pil(image.pil)
    except Exception as error:  # any decoder failure on client bytes is a bad image, not a server bug
        raise InvalidArgument(f"{where}: cannot decode {image.kind} data ({type(error).__name__})") from None


def decode(data: bytes, limits: ImageLimits, where: str = "image") -> torch.Tensor:
    """Encoded bytes -> uint8 RGB [3, H, W]. Refuses bombs before decoding the pixels."""
    return decode_probed(probe(data, limits, where), where)


def _check_pixels(width: int, height: int, limits: ImageLimits, where: str) -> None:
    if width <= 0 or height <= 0:
        raise InvalidArgument(f"{where}: image has no pixels ({width}x{height})")
    if width * height > limits.max_image_pixels:
        raise InvalidArgument(
            f"{where}: {width}x{height} = {width * height} pixels is above the limit of {limits.max_image_pixels}")


def _decode_jpeg(data: bytes, where: str) -> torch.Tensor:
    # libjpeg-turbo through torchvision: the fast path for the most common format.
    buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return decode_jpeg(buffer, mode=ImageReadMode.RGB, apply_exif_orientation=True)


def _decode_pil(pil: Image.Image) -> torch.Tensor:
    pil.seek(0)  # first frame of GIFs, first page of TIFFs
    pil = ImageOps.exif_transpose(pil)
    if pil.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(pil, dtype=np.uint32)
        scale = 65535 if array.max(initial=0) > 255 else 255
        array = (array * 255 // scale).astype(np.uint8)
        pil = Image.fromarray(array, mode="L")
    rgb = np.asarray(pil.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


def from_uint8_hwc(array: np.ndarray, limits: ImageLimits, where: str = "image") -> torch.Tensor:
    """A raw uint8 [H, W, 3] RGB tensor -> uint8 [3, H, W]."""
    if array.ndim != 3 or array.shape[2] != 3:
        raise InvalidArgument(f"{where}: a uint8 tensor must be [H, W, 3] RGB, got shape {list(array.shape)}")
    _check_pixels(array.shape[1], array.shape[0], limits, where)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def from_float_chw(array: np.ndarray, spec: InputSpec, limits: ImageLimits, where: str = "image") -> torch.Tensor:
    """A caller-preprocessed float32 [3, H, W] tensor, checked against the model's input size."""
    if array.ndim != 3 or array.shape[0] != 3:
        raise InvalidArgument(f"{where}: a float32 tensor must be preprocessed [3, H, W], got shape {list(array.shape)}")
    _check_pixels(array.shape[2], array.shape[1], limits, where)
    if spec.size is not None and tuple(array.shape[1:]) != spec.size:
        raise InvalidArgument(
            f"{where}: a float32 tensor must be [3, {spec.size[0]}, {spec.size[1]}] for this model, got {list(array.shape)}")
    if not np.isfinite(array).all():
        raise InvalidArgument(f"{where}: float32 tensor contains NaN or Inf")
    return torch.from_numpy(array.astype(np.float32, copy=True))


def resize_for(image: torch.Tensor, spec: InputSpec, limits: ImageLimits | None = None,
               where: str = "image") -> torch.Tensor:
    """uint8 [3, H, W] -> the model's input size, as torchvision's ImageClassification preset does.

    A resize of the short side scales the long side too: a 65,000x1 strip would become a
    16-gigapixel intermediate, so the intermediate is held to the same pixel limit as inputs."""
    if spec.mode == "resize_crop":
        _check_resized(image.shape[1], image.shape[2], spec.resize, limits, where)
        image = TF.resize(image, [spec.resize], antialias=True)
        return TF.center_crop(image, [spec.height, spec.width])
    if spec.mode == "resize":
        return TF.resize(image, [spec.height, spec.width], antialias=True)
    return image


def _check_resized(height: int, width: int, short_side: int, limits: ImageLimits | None, where: str) -> None:
    if limits is None:
        return
    scale = short_side / min(height, width)
    resized = (round(height * scale), round(width * scale))
    if resized[0] * resized[1] > limits.max_image_pixels:
        raise InvalidArgument(
            f"{where}: {width}x{height} is too elongated for this model: resizing its short side to {short_side} "
            f"gives {resized[1]}x{resized[0]} pixels, above the limit of {limits.max_image_pixels}")


def normalize_batch(batch: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> normalised float NCHW (on whatever device the batch is on)."""
    return batch.float().div_(255.0).sub_(mean).div_(std)


def min_side_ok(spec: InputSpec, height: int, width: int, min_side: int, where: str) -> None:
    if spec.mode == "native" and min(height, width) < min_side:
        raise InvalidArgument(
            f"{where}: {width}x{height} is too small for this model; each side must be at least {min_side} pixels")

