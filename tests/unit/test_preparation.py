"""Preparer: tiny images on the event loop, others on the pool, every core for a lone image.

The results must not depend on where an image was prepared: each is compared with the plain
``resize_for(decode(...))`` path.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from featurizer.registry.presets import LARGENET_INPUT
from featurizer.inference.device import DEFAULT_THREADS, per_thread_intra_op
from featurizer.inference.errors import InvalidArgument
from featurizer.registry.manifest import InputSpec
from featurizer.inference.preparation import INLINE_MAX_BYTES, Preparer
from featurizer.inference.preprocessing import ImageLimits, decode, resize_for
from tests.support.images import encode, photos

LIMITS = ImageLimits(max_image_bytes=32 * 1024 * 1024, max_image_pixels=40_000_000)
ALEXNET_INPUT = InputSpec()


class ObservedPreparer(Preparer):
    """Records which thread prepared each image and how many intra-op threads it had."""

    def __init__(self) -> None:
        super().__init__(LIMITS, workers=2, all_threads=DEFAULT_THREADS)
        self.seen: list[tuple[str, int]] = []

    def _prepare(self, image, spec, min_side, index):
        self.seen.append((threading.current_thread().name, torch.get_num_threads()))
        return super()._prepare(image, spec, min_side, index)


def prepare(images, spec, device_idle=True):
    preparer = ObservedPreparer()
    try:
        tensors = asyncio.run(preparer.prepare(images, spec, 1, device_idle))
    finally:
        preparer.close()
    return tensors, preparer.seen


def tiny_jpeg(side: int = 32) -> bytes:
    return encode(np.asarray(Image.fromarray(photos()["chelsea"]).resize((side, side))))


def test_tiny_images_are_prepared_on_the_event_loop_with_the_same_result():
    data = tiny_jpeg()
    raw = np.ascontiguousarray(photos()["coffee"][:40, :48])
    tensors, seen = prepare([data, raw], LARGENET_INPUT)
    assert [thread for thread, _ in seen] == ["MainThread", "MainThread"]
    assert torch.equal(tensors[0], resize_for(decode(data, LIMITS), LARGENET_INPUT))
    assert torch.equal(tensors[1], resize_for(torch.from_numpy(raw).permute(2, 0, 1).contiguous(), LARGENET_INPUT))


def test_photos_and_tiny_images_that_upscale_a_lot_go_to_the_pool():
    photo = encode(photos()["astronaut"])
    tensors, seen = prepare([photo, tiny_jpeg()], ALEXNET_INPUT)  # 32x32 -> 256x256 is not tiny work
    assert all(thread.startswith("preprocess") for thread, _ in seen)
    assert torch.equal(tensors[0], resize_for(decode(photo, LIMITS), ALEXNET_INPUT))


def test_a_small_file_that_decodes_into_a_large_image_goes_to_the_pool():
    bomb = encode(np.zeros((1500, 1500, 3), np.uint8), "PNG")  # a few KB, 2.25 million pixels
    assert len(bomb) <= INLINE_MAX_BYTES
    tensors, seen = prepare([bomb], LARGENET_INPUT)
    assert seen[0][0].startswith("preprocess")
    assert tensors[0].shape == (3, 32, 32)


def test_a_lone_image_gets_every_thread_and_images_under_load_get_one():
    photo = encode(photos()["rocket"])
    expected_alone = DEFAULT_THREADS if per_thread_intra_op() else torch.get_num_threads()
    _, alone = prepare([photo], ALEXNET_INPUT, device_idle=True)
    _, busy_device = prepare([photo], ALEXNET_INPUT, device_idle=False)
    _, several = prepare([photo, photo], ALEXNET_INPUT, device_idle=True)
    assert alone[0][1] == expected_alone
    if per_thread_intra_op():
        assert busy_device[0][1] == 1
        assert [threads for _, threads in several] == [1, 1]


@pytest.mark.parametrize("image, message", [
    (b"not an image at all", "images[0]: not a supported image format"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "images[0]: cannot decode PNG data"),
    (np.zeros((4, 4), np.uint8), "images[0]: a uint8 tensor must be [H, W, 3] RGB"),
])
def test_bad_tiny_images_are_refused_inline_naming_the_image(image, message):
    with pytest.raises(InvalidArgument, match=message.replace("[", r"\[").replace("]", r"\]")):
        prepare([image], LARGENET_INPUT)
