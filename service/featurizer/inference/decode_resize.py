"""Resizing a decoded photo for the network without full-size float copies, and decoding JPEGs at
a reduced scale.

**Exact** (``resize_exact``): torchvision's preset resizes a uint8 tensor by casting the whole
image to float32 and interpolating (antialiased bilinear: a horizontal pass, then a vertical one).
On a 12-megapixel photo that is a 145 MB copy and about 190 ms on one core. The horizontal pass
treats every row alone, so we run it on 64-row float chunks into a [3, H, out_w] buffer and then
run the vertical pass on that buffer: the same float operations in the same order, so the result
is bit-identical to the preset's (tests check it on real photos), in about 50 ms. Rows that only
feed output rows the centre crop throws away are left at zero (up to a third of the work on a
portrait photo). torch's own uint8 antialias kernel is 20x faster but rounds differently (one
level on 5-17% of pixels), which moves AlexNet features by more than the 1e-4 we promise.

**Reduced scale** (``decode_reduced``): libjpeg can decode a JPEG at 1/2, 1/4 or 1/8 of its size
in the DCT domain (Pillow's ``draft``), about 4x less decoding work on a phone photo. The scale is
the smallest that keeps the image at least twice as large as the resize needs, so it never
upscales and a photo already near the target is decoded at full size. The result differs slightly from an exact
decode (docs/performance.md has the embedding cosines), so it is a choice per model
(``input.decode``) and per request, never the default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

from featurizer.registry.manifest import InputMode, InputSpec

# A reduced-scale decode keeps at least twice the resize's size, so the antialiased resize still
# averages over 2+ decoded pixels per output pixel: measured on every offline photo (original,
# half and phone size), the worst embedding cosine to exact decoding was 0.99919 with no headroom
# (a 512x512 photo decoded at 1/2, straight to 256) and 0.999945 with 2x (docs/performance.md).
DRAFT_HEADROOM = 2.0
CHUNK_ROWS = 64  # 64 x 4032 x 3 float32 = 3 MB: stays in cache between the cast and the pass


def resized_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(H, W) after resizing the short side to ``short_side``: torchvision's rounding (int())."""
    if width <= height:
        return int(short_side * height / width), short_side
    return short_side, int(short_side * width / height)


def resize_exact(image: torch.Tensor, size: tuple[int, int], keep_rows: tuple[int, int] | None = None) -> torch.Tensor:
    """uint8 [..., H, W] -> uint8 [..., h, w], bit-identical to ``TF.resize(image, [h, w], antialias=True)``
    (a batch too: every plane is resized alone).

    ``keep_rows`` (first, end) of the output: only those rows are needed (a crop follows); the
    others may hold anything."""
    height, width = image.shape[-2:]
    if (height, width) == tuple(size):
        return image
    out_h, out_w = size
    lead = image.shape[:-2]
    planes = image.reshape(1, -1, height, width)  # every plane alone, as the preset's interpolate does
    needed = _input_rows(height, out_h, keep_rows) if keep_rows is not None else (0, height)
    if out_w == width:
        rows = torch.zeros(1, planes.shape[1], height, width)
        rows[:, :, needed[0]:needed[1]] = planes[:, :, needed[0]:needed[1]]
    else:
        rows = torch.zeros(1, planes.shape[1], height, out_w)
        for top in range(needed[0], needed[1], CHUNK_ROWS):
            chunk = planes[:, :, top:min(top + CHUNK_ROWS, needed[1])].float()
            rows[:, :, top:top + chunk.shape[2]] = F.interpolate(chunk, size=(chunk.shape[2], out_w), mode="bilinear",
                                                                 align_corners=False, antialias=True)
    if out_h != height:
        rows = F.interpolate(rows, size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=True)
    return torch.round(rows).to(torch.uint8).reshape(*lead, out_h, out_w)  # the preset rounds, then casts


def _input_rows(height: int, out_h: int, keep: tuple[int, int]) -> tuple[int, int]:
    """Input rows that output rows ``keep`` read in an antialiased bilinear pass (ATen's support:
    the scale on a downscale, 1 on an upscale), two rows wider for safety."""
    scale = height / out_h
    support = max(scale, 1.0)
    first = int((keep[0] + 0.5) * scale - support + 0.5)
    end = int((keep[1] - 0.5) * scale + support + 0.5) + 1
    return max(first - 2, 0), min(end + 2, height)


def crop_rows(spec: InputSpec, resized: tuple[int, int]) -> tuple[int, int] | None:
    """The output rows a centre crop of ``spec`` keeps from an image resized to ``resized``."""
    if spec.mode is not InputMode.RESIZE_CROP or resized[0] <= spec.target[0]:
        return None
    height = spec.target[0]
    top = int(round((resized[0] - height) / 2.0))  # TF.center_crop's rounding
    return top, top + height


def draft_size(spec: InputSpec) -> int | None:
    """The side both image dimensions must keep after a reduced-scale decode (None: no reduction).
    Square, so an EXIF rotation applied after decoding cannot make it too small."""
    if spec.mode is InputMode.RESIZE_CROP:
        return int(spec.short_side * DRAFT_HEADROOM)
    if spec.mode is InputMode.RESIZE:
        return int(max(spec.target) * DRAFT_HEADROOM)
    return None  # native-size models see every pixel


def decode_reduced(pil: Image.Image, side: int) -> bool:
    """Ask Pillow's JPEG loader for the smallest DCT scale (1/2, 1/4, 1/8) keeping both sides at
    least ``side``. True when it will decode smaller than full size (call before loading)."""
    width, height = pil.size
    if min(width, height) < 2 * side:  # even 1/2 would go below side: the full-size decode is the exact one
        return False
    pil.draft("RGB", (side, side))
    return pil.size != (width, height)
