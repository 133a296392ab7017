"""A short mutation fuzz of the decoder path. Whatever bytes arrive, ``decode`` returns
a uint8 [3, H, W] tensor within the pixel limit or raises InvalidArgument, never anything else."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featurizer.inference.errors import InvalidArgument
from featurizer.inference.preprocessing import ImageLimits, decode
from tests.support.images import encode, photos

LIMITS = ImageLimits(max_image_bytes=1 << 20, max_image_pixels=1 << 21)
MUTANTS_PER_FORMAT = 400


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One random edit of the kinds that break parsers: flips, truncation, splices, zeroed runs."""
    out = bytearray(data)
    kind = rng.integers(5)
    at = int(rng.integers(len(out)))
    if kind == 0:
        for i in rng.integers(0, len(out), int(rng.integers(1, 9))):
            out[i] = int(rng.integers(256))
    elif kind == 1:
        del out[at:]
    elif kind == 2:
        out[at:at] = rng.bytes(int(rng.integers(1, 64)))
    elif kind == 3:
        start = int(rng.integers(len(out)))
        out[at:at] = out[start:start + int(rng.integers(1, 256))]
    else:
        out[at:at + int(rng.integers(1, 128))] = bytes(min(len(out) - at, 128))
    return bytes(out)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "TIFF", "BMP", "WEBP"])
def test_mutated_images_decode_or_raise_invalid_argument(fmt):
    rng = np.random.default_rng(sum(map(ord, fmt)))
    seed = encode(photos()["chelsea"][:48, :64], fmt)
    outcomes = {"decoded": 0, "refused": 0}
    for _ in range(MUTANTS_PER_FORMAT):
        data = mutate(seed, rng)
        try:
            image = decode(data, LIMITS)
        except InvalidArgument as error:
            assert str(error).startswith("image: ")  # names the input
            outcomes["refused"] += 1
            continue
        assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3
        assert 0 < image.shape[1] * image.shape[2] <= LIMITS.max_image_pixels
        outcomes["decoded"] += 1
    print(f"\n{fmt}: {MUTANTS_PER_FORMAT} mutants, {outcomes['decoded']} decoded, {outcomes['refused']} refused")
    assert outcomes["refused"] > 0  # the mutations did reach the error paths
