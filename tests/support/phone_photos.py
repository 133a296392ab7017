"""Real photographs at the sizes users send: phone-size (upscaled with BICUBIC, JPEG q90, as
../shared/DATA.md says), original and shrunk, as JPEG bytes. Made once per process."""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image

from tests.support.images import photos

PHONE = (4032, 3024)


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@functools.cache
def sized_photos() -> dict[str, bytes]:
    """name@size -> JPEG bytes: every test photo at its own size and a tenth of a megapixel, two at
    phone size (landscape and portrait) and one large (1411x1411 retina)."""
    import skimage.data

    out: dict[str, bytes] = {}
    for name, array in photos().items():
        image = Image.fromarray(np.ascontiguousarray(array)).convert("RGB")
        out[f"{name}@original"] = jpeg(image)
        out[f"{name}@small"] = jpeg(image.resize((150, 100), Image.Resampling.BICUBIC))
    base = Image.fromarray(photos()["coffee"])
    out["coffee@phone"] = jpeg(base.resize(PHONE, Image.Resampling.BICUBIC))
    out["chelsea@phone-portrait"] = jpeg(Image.fromarray(photos()["chelsea"]).resize(PHONE[::-1], Image.Resampling.BICUBIC))
    out["retina@original"] = jpeg(Image.fromarray(skimage.data.retina()).convert("RGB"))
    return out
