"""Turn what a Python caller has (bytes, paths, numpy arrays, PIL images) into ``Image`` messages."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Union

import numpy as np

from .tensors import to_proto
from .v1 import featurizer_pb2 as pb

ImageLike = Union[bytes, bytearray, memoryview, str, os.PathLike, np.ndarray, Any]
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def expand_paths(item: str | os.PathLike) -> list[Path]:
    """A file, a directory (its image files, sorted) or a glob pattern, as sorted file paths."""
    path = Path(item)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if path.exists():
        return [path]
    matches = sorted(Path(p) for p in glob.glob(str(item), recursive=True))
    if not matches:
        raise FileNotFoundError(f"no image file, directory or glob match for {str(item)!r}")
    return [p for p in matches if p.is_file()]


def _array_image(array: np.ndarray) -> pb.Image:
    if array.dtype == np.uint8:
        if array.ndim == 2:  # greyscale HW: the server wants RGB HWC
            array = np.repeat(array[:, :, None], 3, axis=2)
        return pb.Image(tensor=to_proto(array))
    if array.dtype in (np.float32, np.float64):
        return pb.Image(tensor=to_proto(array.astype(np.float32, copy=False)))
    raise TypeError(f"numpy images must be uint8 HWC RGB or float32 CHW, got {array.dtype}")


def to_image(item: ImageLike) -> pb.Image:
    """One input (not a directory or glob) as an Image message."""
    if isinstance(item, pb.Image):
        return item
    if isinstance(item, (bytes, bytearray, memoryview)):
        return pb.Image(encoded=bytes(item))
    if isinstance(item, (str, os.PathLike)):
        return pb.Image(encoded=Path(item).read_bytes())
    if isinstance(item, np.ndarray):
        return _array_image(item)
    if hasattr(item, "convert") and hasattr(item, "size"):  # a PIL image, without importing PIL
        return _array_image(np.asarray(item.convert("RGB")))
    raise TypeError(f"cannot send {type(item).__name__} as an image; pass bytes, a path, a numpy array or a PIL image")


def expand_inputs(images: ImageLike | Iterable[ImageLike]) -> Iterator[ImageLike]:
    """Flatten a single input or a sequence of inputs into single images, lazily, without reading
    files (directories and globs become their sorted file paths; a uint8 NHWC array, N images)."""
    if isinstance(images, np.ndarray) and images.ndim == 4 and images.dtype == np.uint8:
        items: Iterable[ImageLike] = iter(images)
    elif isinstance(images, (bytes, bytearray, memoryview, np.ndarray)) or hasattr(images, "convert"):
        items = [images]
    elif isinstance(images, (str, os.PathLike)):
        items = expand_paths(images)
    else:
        items = images
    for item in items:
        if isinstance(item, (str, os.PathLike)) and not Path(item).is_file():
            yield from expand_paths(item)
        else:
            yield item
