"""A folder of real photographs as a user's collection looks: many small files in JPEG, PNG and
WebP of varied sizes, plus a few bad files (corrupt, empty, not an image)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

FORMATS = (("JPEG", ".jpg"), ("PNG", ".png"), ("WEBP", ".webp"))


def source_photos() -> list[np.ndarray]:
    """Every offline photograph of ../shared/DATA.md, as uint8 HWC RGB."""
    import matplotlib.cbook
    import skimage.data
    from sklearn.datasets import load_sample_images

    out = [getattr(skimage.data, name)() for name in ("chelsea", "coffee", "astronaut", "rocket")]
    out += [np.repeat(getattr(skimage.data, name)()[:, :, None], 3, axis=2) for name in ("camera", "moon", "coins")]
    out += list(load_sample_images().images)
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        out.append(np.asarray(Image.open(f).convert("RGB")))
    return out


@dataclass(frozen=True)
class PhotoFolder:
    root: Path
    good: list[Path]        # the images, in the order a directory scan lists them
    bad: list[Path]         # refused by the server: 3 corrupt files and 1 empty one, scan order
    not_image: Path         # skipped by extension

    @property
    def images(self) -> list[Path]:
        """Every file with an image extension, in scan order (what a job sends)."""
        return sorted(self.good + self.bad)


def make_photo_folder(root: Path, count: int, seed: int = 0) -> PhotoFolder:
    """``count`` distinct crops of the photographs, 32-96 px, cycling JPEG/PNG/WebP, and the bad files."""
    rng = np.random.default_rng(seed)
    photos = source_photos()
    good = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        side = int(rng.integers(min(h, w) // 4, min(h, w)))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        size = (int(rng.integers(32, 97)), int(rng.integers(32, 97)))
        image = Image.fromarray(photo[y:y + side, x:x + side]).resize(size, Image.BILINEAR)
        fmt, suffix = FORMATS[i % len(FORMATS)]
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **({"quality": 85} if fmt != "PNG" else {}))
        path = root / f"shelf{i % 7}" / f"photo{i:05d}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buffer.getvalue())
        good.append(path)
    bad = [root / "shelf1" / "photo00100b.jpg", root / "shelf3" / "photo00777b.png",
           root / "shelf5" / "photo01500b.webp", root / "shelf6" / "photo01900b.jpg"]
    bad[0].write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG" * 10)   # a JPEG marker, then garbage
    bad[1].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))  # a PNG signature, no image
    bad[2].write_bytes(bytes(rng.integers(0, 256, 500, dtype=np.uint8)))   # noise
    bad[3].write_bytes(b"")                                                   # empty
    not_image = root / "shelf2" / "notes.txt"
    not_image.write_text("photos from the summer\n")
    return PhotoFolder(root, sorted(good), sorted(bad), not_image)
