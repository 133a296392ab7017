"""Tensor shape bounds, bit depths by the format, JPEG scan limits,
deadlines and fairness on the decode pool, and admission before decoding.

Each test drives the real function or class; where a test must hold work in progress it does so
with a gate in a recording subclass (as ``test_preparation.py`` records threads), never a mock.
"""

from __future__ import annotations

import asyncio
import io
import struct
import threading

import numpy as np
import pytest
import torch
from featurizer_client.tensors import MAX_DIMENSION, MAX_RANK, TensorFormatError, from_proto, to_proto
from featurizer_client.v1 import featurizer_pb2 as pb
from PIL import Image, TiffImagePlugin

from featurizer.inference.batcher import Batcher
from featurizer.inference.device import DEFAULT_THREADS
from featurizer.inference.errors import DeadlineExceeded, InvalidArgument, Overloaded
from featurizer.registry.manifest import InputSpec
from featurizer.inference.preparation import Preparer
from featurizer.inference.preprocessing import MAX_JPEG_SCANS, ImageLimits, decode, jpeg_scans, probe
from tests.support.images import encode, photos

LIMITS = ImageLimits(max_image_bytes=32 * 1024 * 1024, max_image_pixels=40_000_000)
SAFETY_S = 30  # only against hangs
GREY = np.arange(256, dtype=np.uint16).reshape(16, 16)  # samples 0..255


# ----- 1. tensor shapes ------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, shape", [(pb.DTYPE_UINT8, [2**62, 2**62, 0]), (pb.DTYPE_FLOAT32, [3, 2**62, 0]),
                                          (pb.DTYPE_UINT8, [MAX_DIMENSION + 1, 0])])
def test_a_zero_size_tensor_with_huge_dimensions_is_a_format_error_naming_the_shape(dtype, shape):
    with pytest.raises(TensorFormatError, match=rf"tensor shape \[{shape[0]}, .*above the limit of {MAX_DIMENSION}"):
        from_proto(pb.Tensor(dtype=dtype, shape=shape, data=b""))


def test_dimensions_under_the_limit_that_numpy_cannot_index_are_a_format_error_too():
    with pytest.raises(TensorFormatError, match=r"tensor shape \[2147483647, 2147483647, 0\] is too large"):
        from_proto(pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[MAX_DIMENSION, MAX_DIMENSION, 0], data=b""))


def test_rank_is_bounded_and_ordinary_tensors_still_round_trip():
    with pytest.raises(TensorFormatError, match=rf"{MAX_RANK + 1} dimensions; at most {MAX_RANK}"):
        from_proto(pb.Tensor(dtype=pb.DTYPE_UINT8, shape=[1] * (MAX_RANK + 1), data=b"\x00"))
    for array in (np.zeros((4, 0, 3), np.uint8), np.arange(24, dtype=np.float32).reshape(2, 3, 4)):
        assert np.array_equal(from_proto(to_proto(array)), array)


# ----- 3. bit depth from the format ------------------------------------------------------------
def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _expected(samples: np.ndarray, white: int) -> np.ndarray:
    """Samples scaled by the declared depth, rounded, as the RGB planes decode must give."""
    grey = np.rint(np.clip(samples.astype(np.float64), 0, white) * 255 / white).astype(np.uint8)
    return np.repeat(grey[None], 3, axis=0)


def _with_sample_format(samples: np.ndarray, sample_format: int) -> bytes:
    """A TIFF of ``samples`` (int32 or uint16 bits) with an explicit SampleFormat tag."""
    info = TiffImagePlugin.ImageFileDirectory_v2()
    info[339], info.tagtype[339] = sample_format, 3
    return _save(Image.fromarray(samples), "TIFF", tiffinfo=info)


def _uint32_tiff(samples: np.ndarray) -> bytes:
    """Pillow writes 32-bit TIFFs as signed; flip SampleFormat to unsigned (1) in the bytes."""
    data = bytearray(_save(Image.fromarray(samples.astype(np.uint32).view(np.int32)), "TIFF"))
    at = data.find(struct.pack("<HHIH", 339, 3, 1, 2))
    assert at > 0
    data[at + 8:at + 10] = struct.pack("<H", 1)
    return bytes(data)


CASES = {  # name -> (file bytes, Pillow's mode for it, the samples, the declared white)
    "dark 16-bit PNG": (_save(Image.fromarray(GREY), "PNG"), "I;16", GREY, 65535),
    "bright 16-bit PNG": (_save(Image.fromarray(GREY * 257), "PNG"), "I;16", GREY * 257, 65535),
    "dark 16-bit TIFF": (_save(Image.fromarray(GREY), "TIFF"), "I;16", GREY, 65535),
    "16-bit big-endian TIFF": (_save(Image.fromarray((GREY * 257).astype(">u2")), "TIFF"), "I;16B", GREY * 257, 65535),
    "16-bit signed TIFF": (_with_sample_format((GREY.astype(np.int16) * 128 - 16384).view(np.uint16), 2), "I",
                           GREY.astype(np.int64) * 128 - 16384, 32767),
    "dark 32-bit int TIFF": (_save(Image.fromarray(GREY.astype(np.int32)), "TIFF"), "I", GREY, 2**31 - 1),
    "bright 32-bit int TIFF": (_save(Image.fromarray(GREY.astype(np.int32) * (2**23)), "TIFF"), "I",
                               GREY.astype(np.int64) * 2**23, 2**31 - 1),
    "32-bit unsigned TIFF": (_uint32_tiff(GREY.astype(np.uint64) * 2**24), "I", GREY.astype(np.int64) * 2**24,
                             2**32 - 1),
}


@pytest.mark.parametrize("name", list(CASES))
def test_deep_greyscale_is_scaled_by_its_declared_depth_never_by_its_data(name):
    data, mode, samples, white = CASES[name]
    assert Image.open(io.BytesIO(data)).mode == mode  # what this Pillow gives: the case is the one named
    decoded = decode(data, LIMITS)
    assert decoded.dtype == torch.uint8
    assert np.array_equal(decoded.numpy(), _expected(samples, white))


def test_a_dark_16_bit_png_stays_dark():
    dark = decode(CASES["dark 16-bit PNG"][0], LIMITS)
    assert int(dark.max()) <= 1  # 255 of 65535 is 1/257 of white, not white
    assert np.array_equal(decode(CASES["bright 16-bit PNG"][0], LIMITS).numpy()[0], GREY.astype(np.uint8))


# ----- 5. JPEG scans ---------------------------------------------------------------------------
def progressive_with_repeated_last_scan(repeats: int, side: int = 64) -> bytes:
    """Pillow's progressive JPEG with its last scan (SOS header + data, up to EOI) repeated."""
    image = np.asarray(Image.fromarray(photos()["chelsea"]).resize((side, side)))
    data = encode(image, "JPEG", progressive=True)
    last = data.rfind(b"\xff\xda")
    return data[:-2] + data[last:-2] * repeats + data[-2:]


def with_exif_thumbnail(jpeg: bytes, thumbnail: bytes) -> bytes:
    """``jpeg`` with an APP1 segment holding a whole JPEG (as cameras store thumbnails)."""
    payload = b"Exif\x00\x00" + thumbnail
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def test_scans_are_counted_exactly():
    baseline = encode(photos()["coffee"])
    progressive = encode(photos()["coffee"], "JPEG", progressive=True)
    assert jpeg_scans(baseline, MAX_JPEG_SCANS) == 1
    assert jpeg_scans(progressive, MAX_JPEG_SCANS) == 10  # libjpeg's progressive script for colour
    thumbnail = progressive_with_repeated_last_scan(0, side=32)  # 10 scans inside the APP1 payload
    assert jpeg_scans(with_exif_thumbnail(baseline, thumbnail), MAX_JPEG_SCANS) == 1
    assert jpeg_scans(progressive_with_repeated_last_scan(20), 10**6) == 10 + 20
    assert jpeg_scans(progressive_with_repeated_last_scan(30_000), MAX_JPEG_SCANS) == MAX_JPEG_SCANS + 1  # stops


def test_a_jpeg_with_too_many_scans_is_refused_from_the_header_and_one_at_the_limit_decodes():
    with pytest.raises(InvalidArgument, match=rf"images\[0\]: JPEG has more than {MAX_JPEG_SCANS} scans"):
        probe(progressive_with_repeated_last_scan(MAX_JPEG_SCANS - 9), LIMITS, "images[0]")
    at_limit = progressive_with_repeated_last_scan(MAX_JPEG_SCANS - 10)
    assert jpeg_scans(at_limit, MAX_JPEG_SCANS) == MAX_JPEG_SCANS
    assert decode(at_limit, LIMITS).shape == (3, 64, 64)


# ----- 5. the decode pool: deadlines and fairness ----------------------------------------------
class GatedPreparer(Preparer):
    """Records the order images are prepared in (by a tag: the top-left pixel's red value) and
    holds the images tagged in ``hold`` until ``release`` is set."""

    def __init__(self, workers: int = 1, hold: tuple[int, ...] = ()) -> None:
        super().__init__(LIMITS, workers=workers, all_threads=DEFAULT_THREADS)
        self.hold, self.entered, self.release = hold, threading.Event(), threading.Event()
        self.order: list[int] = []

    def _prepare(self, image, spec, min_side, index):
        tag = int(image[0, 0, 0])
        self.order.append(tag)
        if tag in self.hold:
            self.entered.set()
            assert self.release.wait(SAFETY_S)
        return super()._prepare(image, spec, min_side, index)


SPEC = InputSpec(mode="resize", resize=None, height=8, width=8)


def tagged(tag: int) -> np.ndarray:
    """A uint8 image too large to prepare inline (so it goes to the pool), tagged by its first pixel."""
    image = np.zeros((200, 200, 3), np.uint8)
    image[0, 0, 0] = tag
    return image


async def _wait(event: threading.Event) -> None:
    assert await asyncio.get_running_loop().run_in_executor(None, event.wait, SAFETY_S)


async def _until(condition) -> None:
    """Poll ``condition`` (bounded by SAFETY_S): for states no event reports, such as a clock passing."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + SAFETY_S
    while not condition():
        assert loop.time() < give_up
        await asyncio.sleep(0.01)


def test_an_image_whose_deadline_passed_is_not_decoded():
    async def scenario(preparer: GatedPreparer) -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(DeadlineExceeded, match=r"images\[0\]: the deadline passed"):
            await preparer.prepare([tagged(1)], SPEC, 1, True, deadline=loop.time())
        held = asyncio.ensure_future(preparer.prepare([tagged(2)], SPEC, 1, True))
        await _wait(preparer.entered)  # the only worker is busy with image 2
        deadline = loop.time() + 0.05
        late = asyncio.ensure_future(preparer.prepare([tagged(3)], SPEC, 1, True, deadline=deadline))
        await _until(lambda: loop.time() > deadline)  # image 3's deadline passes while it waits for the worker
        preparer.release.set()
        assert (await held)[0].shape == (3, 8, 8)
        with pytest.raises(DeadlineExceeded):
            await late

    preparer = GatedPreparer(hold=(2,))
    try:
        asyncio.run(scenario(preparer))
    finally:
        preparer.close()
    assert preparer.order == [2]  # neither image 1 nor image 3 was decoded


@pytest.mark.parametrize("workers", [1, 2])
def test_a_many_image_request_does_not_hold_a_one_image_caller_behind_all_its_images(workers):
    async def scenario(preparer: GatedPreparer) -> None:
        big = asyncio.ensure_future(preparer.prepare([tagged(10 + i) for i in range(6)], SPEC, 1, False))
        await _until(lambda: len(preparer.order) == workers)  # every worker holds an image of the big request
        small = asyncio.ensure_future(preparer.prepare([tagged(99)], SPEC, 1, False))
        await _until(lambda: preparer._pool._work_queue.qsize() == 1)  # only the small caller's image waits
        preparer.release.set()
        assert len(await small) == 1 and len(await big) == 6

    preparer = GatedPreparer(workers=workers, hold=tuple(range(10, 10 + workers)))
    try:
        asyncio.run(scenario(preparer))
    finally:
        preparer.close()
    # The big request had `workers` images on the pool, the rest waited their turn behind the
    # one-image caller (the old code queued all six on the pool ahead of it).
    assert preparer.order.index(99) == workers, preparer.order


# ----- 6. admission before decoding ------------------------------------------------------------
async def _echo(items: list[int]) -> list[int]:
    return items


def test_images_being_prepared_count_against_the_queue_limit_and_are_given_back():
    async def scenario() -> None:
        batcher = Batcher(_echo, name="m@1", max_batch_size=4, max_delay_s=0, max_queue=4)
        admission = batcher.admit(3)  # a request whose 3 images are being decoded
        with pytest.raises(Overloaded, match=r"m@1 is overloaded: 0 images queued, 3 being prepared, limit 4"):
            batcher.admit(2)
        other = batcher.admit(1)  # still room for one
        assert await batcher.submit([1], admission=other) == [1]
        assert await batcher.submit([5, 6, 7], admission=admission) == [5, 6, 7]  # no second check
        admission.release()  # idempotent
        failed = batcher.admit(4)
        failed.release()  # its preparation failed: the room comes back
        assert await batcher.submit([1, 2, 3, 4]) == [1, 2, 3, 4]
        await batcher.close()

    asyncio.run(asyncio.wait_for(scenario(), SAFETY_S))
