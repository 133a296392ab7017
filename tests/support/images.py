"""Real photographs that ship inside packages (no network), encoded the ways clients send them."""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
from PIL import Image


@lru_cache(maxsize=None)
def photos() -> dict[str, np.ndarray]:
    """name -> uint8 HWC RGB array."""
    import skimage.data

    out = {name: getattr(skimage.data, name)() for name in ("chelsea", "coffee", "astronaut", "rocket")}
    out["camera"] = np.repeat(skimage.data.camera()[:, :, None], 3, axis=2)  # greyscale as RGB
    return out


def encode(array: np.ndarray, fmt: str = "JPEG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}) | kwargs)
    return buffer.getvalue()


def encoded_photos(fmt: str = "JPEG") -> dict[str, bytes]:
    return {name: encode(array, fmt) for name, array in photos().items()}
