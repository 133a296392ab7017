"""Labelled training images, prepared exactly as the server prepares a request's images.

Every loader ends in the same place: uint8 ``[N, 3, H, W]`` tensors that went through
``featurizer.inference.preprocessing`` (the server's decoder and ``resize_for`` with the manifest's
``InputSpec``), so a model never sees at serving time pixels it was not trained on.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from featurizer.registry.manifest import InputSpec
from featurizer.inference.preprocessing import ImageLimits, decode, resize_for
from featurizer.settings import InvalidOption

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# LargeNet's input: 32x32, pixels scaled to [-1, 1] (the lecture's Normalize(0.5, 0.5)).
_LIMITS = ImageLimits(max_image_bytes=64 << 20, max_image_pixels=64 << 20)


class DatasetError(InvalidOption):
    """Training data that cannot be used; ``option`` names the job field at fault (``data``, ``classes``)."""


@dataclass(frozen=True)
class LabelledImages:
    """Model-ready uint8 images ``[N, 3, H, W]``, class indices ``[N]`` and the class names."""

    images: torch.Tensor
    targets: torch.Tensor
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, indices: torch.Tensor) -> "LabelledImages":
        return LabelledImages(self.images[indices], self.targets[indices], self.classes)


def image_folder(root: Path, spec: InputSpec) -> LabelledImages:
    """``root/<class>/*.jpg`` (torchvision's ImageFolder layout), decoded by the server's decoder."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError("data", f"{root} is not a directory")
    try:
        classes, class_to_idx = find_classes(str(root))
        samples = make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as error:
        raise DatasetError("data", f"{error}") from None
    if len(classes) < 2:
        raise DatasetError("data", f"{root} needs at least two class folders, found {classes}")
    images = [resize_for(decode(Path(path).read_bytes(), _LIMITS, where=path), spec) for path, _ in samples]
    if len({tuple(image.shape) for image in images}) > 1:
        raise DatasetError("data", f"images of {root} have different sizes after preprocessing; "
                           f"a native-size backbone cannot batch them")
    return LabelledImages(torch.stack(images), torch.tensor([t for _, t in samples]), tuple(classes))


def fashion_mnist_available(root: Path = FASHION_MNIST_DIR) -> bool:
    return (root / "train-images-idx3-ubyte.gz").is_file() and (root / "t10k-images-idx3-ubyte.gz").is_file()


@lru_cache(maxsize=4)  # decompressing 60,000 images takes a second; the demo and tests reuse them
def read_fashion_mnist(split: str, root: Path = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """The raw idx files, read-only: uint8 greyscale ``[N, 28, 28]`` and labels ``[N]`` (train or t10k)."""
    if not fashion_mnist_available(root):
        raise DatasetError("fashion_mnist", f"Fashion-MNIST is not installed in {root} (apt-get install dataset-fashion-mnist)")
    with gzip.open(root / f"{split}-images-idx3-ubyte.gz") as handle:
        images = np.frombuffer(handle.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(root / f"{split}-labels-idx1-ubyte.gz") as handle:
        labels = np.frombuffer(handle.read(), np.uint8, offset=8)
    return images, labels


def fashion_mnist(classes: Sequence[int], spec: InputSpec, split: str = "train", per_class: int = 0,
                  root: Path = FASHION_MNIST_DIR) -> LabelledImages:
    """A subset of Fashion-MNIST as RGB images resized like the server resizes a 28x28 upload.

    ``per_class`` > 0 keeps only the first that many images of each class (fast demos)."""
    bad = [c for c in classes if not 0 <= c < len(FASHION_MNIST_LABELS)]
    if bad or len(set(classes)) < 2:
        raise DatasetError("classes", f"need two or more distinct Fashion-MNIST classes 0..9, got {list(classes)}")
    images, labels = read_fashion_mnist(split, root)
    keep = np.concatenate([np.flatnonzero(labels == c)[: per_class or None] for c in classes])
    keep.sort()
    grey = torch.from_numpy(images[keep].copy())
    rgb = grey[:, None].expand(-1, 3, -1, -1).contiguous()  # what the decoder makes of a greyscale file
    remap = {c: i for i, c in enumerate(classes)}
    targets = torch.tensor([remap[int(c)] for c in labels[keep]])
    return LabelledImages(resize_for(rgb, spec), targets, tuple(FASHION_MNIST_LABELS[c] for c in classes))


def parse_classes(text: str) -> list[int]:
    """'7,9' -> [7, 9]."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise DatasetError("classes", f"expected comma-separated class numbers like 7,9, got {text!r}") from None


def split(data: LabelledImages, val_fraction: float, seed: int) -> tuple[LabelledImages, LabelledImages]:
    """A seeded shuffle, then the last ``val_fraction`` of it for validation (at least one image)."""
    if not 0 <= val_fraction < 1:
        raise DatasetError("val_fraction", f"must be in [0, 1), got {val_fraction}")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(len(data) * val_fraction)) if val_fraction > 0 else 0
    return data.subset(order[: len(data) - n_val]), data.subset(order[len(data) - n_val:])
