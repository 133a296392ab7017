"""Image bytes or raw tensors -> one uint8 (or preprocessed float32) CHW tensor per image.

Pure functions; ``preparation.py`` decides which thread runs them. Decoding happens once, to uint8
(at a reduced JPEG scale in ``fast`` decode mode); resizing gives exactly torchvision's
``ImageClassification`` preset's uint8 pixels without a full-size float copy (``decode_resize.py``);
scaling to [0, 1] and mean/std normalisation happen later, on the device, per batch.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.functional as TF  # the functions ImageClassification presets use
from PIL import Image, ImageOps
from torchvision.io import ImageReadMode, decode_jpeg

from featurizer.inference.decode_resize import crop_rows, decode_reduced, draft_size, resize_exact, resized_size
from featurizer.inference.errors import InvalidArgument
from featurizer.registry.manifest import DecodeMode, InputMode, InputSpec

Image.MAX_IMAGE_PIXELS = None  # we enforce our own limit before decoding, with a clear status
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
)
SUPPORTED = "JPEG, PNG, WebP, BMP, TIFF, GIF"
# A progressive JPEG's decoder reworks the whole coefficient buffer once per scan: a 6000x6000
# file whose empty last scan is repeated 30,000 times took 11-16 s to decode; on the shared test
# machine each repeat of a 6000x6000 scan costs ~25 ms (256 scans: 6.5 s). Real files have
# 1 (baseline) to about 10 (libjpeg's progressive script) scans; 64 bounds the worst to ~1.6 s.
MAX_JPEG_SCANS = 64
_MARKER_AFTER_SCAN = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")  # 0xFF then neither stuffing, RSTn nor fill


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
    if kind == "JPEG":
        scans = jpeg_scans(data, MAX_JPEG_SCANS)
        if scans > MAX_JPEG_SCANS:
            raise InvalidArgument(f"{where}: JPEG has more than {MAX_JPEG_SCANS} scans (the limit, to bound "
                                  f"decoding work); re-encode it")
    return Probe(kind, width, height, pil, data)


def jpeg_scans(data: bytes, stop: int) -> int:
    """Start-of-scan (0xFFDA) markers of a JPEG, counting stops past ``stop``.

    Walks the marker segments, skipping each by its length (so bytes inside APPn/COM payloads such
    as an EXIF thumbnail do not count), and jumps over entropy-coded data to the next marker: there
    a 0xFF byte is always stuffed (0xFF00), a restart marker or fill, so the count is exact. The
    jumps are regex searches: about a millisecond for a megabyte."""
    count, pos, end = 0, 2, len(data)
    while pos + 1 < end:
        marker = data[pos + 1]
        if data[pos] != 0xFF or marker in (0x00, 0xFF) or 0xD0 <= marker <= 0xD7:
            found = _MARKER_AFTER_SCAN.search(data, pos)  # inside a scan's entropy-coded data
            if found is None:
                break
            pos = found.start()
        elif marker == 0xD9:  # EOI
            break
        elif marker in (0x01, 0xD8):  # TEM, SOI: markers without a length
            pos += 2
        else:
            if marker == 0xDA:
                count += 1
                if count > stop:
                    break
            pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return count


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


def decode_for(image: Probe, spec: InputSpec, mode: DecodeMode, where: str = "image") -> torch.Tensor:
    """A probed image -> uint8 RGB [3, H, W], at a reduced JPEG scale when ``mode`` is fast and the
    resize for ``spec`` needs fewer pixels (never below the resize's size); otherwise exact."""
    side = draft_size(spec) if mode is DecodeMode.FAST and image.kind == "JPEG" else None
    if side is None:
        return decode_probed(image, where)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if not decode_reduced(image.pil, side):
                return decode_probed(image, where)
            return _decode_pil(image.pil)
    except Exception as error:  # as in decode_probed: a decoder failure is a bad image
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
    maximum = _integer_white(pil)  # read before exif_transpose, which returns a copy without tags
    pil = ImageOps.exif_transpose(pil)
    if maximum is not None:
        array = np.asarray(pil)
        if maximum == 2**32 - 1 and array.dtype == np.int32:
            array = array.view(np.uint32)  # Pillow holds unsigned 32-bit samples in a signed int32
        array = np.clip(array.astype(np.int64), 0, maximum)  # negatives of signed data are black
        array = ((array * 255 + maximum // 2) // maximum).astype(np.uint8)  # rounded, exact for v * 257
        pil = Image.fromarray(array, mode="L")
    rgb = np.asarray(pil.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


def _integer_white(pil: Image.Image) -> int | None:
    """The sample value that means white for a greyscale image of more than 8 bits (None for the
    8-bit modes Pillow converts itself), from the format's declared bit depth, never from the
    data: a dark 16-bit image (samples 0..255 of 65535) must stay dark.

    Pillow 13 opens 16-bit greyscale PNG and TIFF as ``I;16``/``I;16B`` (unsigned 16-bit), and
    32-bit integer TIFF (and 16-bit signed TIFF) as ``I`` with the file's BitsPerSample and
    SampleFormat in its tags."""
    if pil.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return 2**16 - 1
    if pil.mode == "I;16S":
        return 2**15 - 1
    if pil.mode != "I":
        return None
    tags = getattr(pil, "tag_v2", None)
    bits, sample_format = 32, 2  # mode I itself: 32-bit signed
    if tags is not None:
        bits = int(_first(tags.get(258), 32))
        sample_format = int(_first(tags.get(339), 1))  # TIFF's default SampleFormat: unsigned
    if not 1 <= bits <= 32:
        bits = 32
    return 2 ** (bits - 1) - 1 if sample_format == 2 else 2**bits - 1


def _first(value, default):
    """A TIFF tag's first value (tags holding one value per sample come as tuples)."""
    if isinstance(value, tuple):
        return value[0] if value else default
    return default if value is None else value


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
    if spec.mode is InputMode.RESIZE_CROP:
        _check_resized(image.shape[-2], image.shape[-1], spec.short_side, limits, where)
        size = resized_size(image.shape[-2], image.shape[-1], spec.short_side)
        image = resize_exact(image, size, crop_rows(spec, size))
        return TF.center_crop(image, list(spec.target))
    if spec.mode is InputMode.RESIZE:
        return resize_exact(image, spec.target)
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


def min_side_ok(spec: InputSpec, height: int, width: int, min_side: int, where: str) -> None:
    if spec.mode == "native" and min(height, width) < min_side:
        raise InvalidArgument(
            f"{where}: {width}x{height} is too small for this model; each side must be at least {min_side} pixels")

