"""The same real photographs for every system, written once as files the load generators read.

Photos ship inside scikit-image (no network, see ../shared/DATA.md). AlexNet gets them as full-size
JPEGs (``full``: 451x300 to 1000x872) and upscaled to a phone camera's 12 megapixels (``phone``:
4032x3024, bicubic, as tests/support/phone_photos.py makes them, about a megabyte each at q90), where
decoding and resizing cost more than the network; LargeNet gets the same photos shrunk to 32x32 (its
input size), so per-request overhead dominates and the echo server can answer the same payloads.
"""

from __future__ import annotations

import io
from pathlib import Path

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field")
PHONE = (4032, 3024)  # width x height of a 12-megapixel phone photo, landscape (every photo here is)


def write_payloads(directory: Path) -> dict[str, Path]:
    """JPEG files under ``directory/full``, ``directory/phone`` and ``directory/small``; returns the folders."""
    import skimage.data
    from PIL import Image

    folders = {"full": directory / "full", "phone": directory / "phone", "small": directory / "small"}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        image.save(folders["full"] / f"{name}.jpg", format="JPEG", quality=90)
        image.resize(PHONE, Image.Resampling.BICUBIC).save(folders["phone"] / f"{name}.jpg", format="JPEG", quality=90)
        image.resize((32, 32), Image.Resampling.BILINEAR).save(folders["small"] / f"{name}.jpg", format="JPEG", quality=90)
    return folders


def read_payloads(folder: Path) -> list[bytes]:
    """Encoded images, in a stable order (light: no image libraries imported)."""
    files = sorted(folder.glob("*.jpg"))
    if not files:
        raise FileNotFoundError(f"no .jpg payloads in {folder}")
    return [f.read_bytes() for f in files]


def describe(folder: Path) -> list[dict]:
    """Name, size in bytes and pixel size of every payload, for the report."""
    from PIL import Image

    out = []
    for f in sorted(folder.glob("*.jpg")):
        with Image.open(io.BytesIO(f.read_bytes())) as image:
            out.append({"name": f.stem, "bytes": f.stat().st_size, "width": image.width, "height": image.height})
    return out
