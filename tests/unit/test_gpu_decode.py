"""JPEG decoding on the GPU, the parts that run on CPU: which image goes to nvJPEG (headers built
with Pillow), grouping, orientation, the fall-back to the CPU path and its statuses, and the
start-up refusal on a machine without CUDA. The decoder's steps run here on a CPU device
(libjpeg-turbo in torchvision's batched call); the GPU numbers are bench/gpu_check.sh's."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from featurizer.inference.device import Device, decode_device
from featurizer.inference.errors import InvalidArgument
from featurizer.inference.gpu_decode import (Fallback, JpegBatchDecoder, batch_decoder, fallback_for, group,
                                             jpeg_frame, orient, orientation_of, split)
from featurizer.inference.preparation import Preparer
from featurizer.inference.preprocessing import ImageLimits, probe
from featurizer.registry.manifest import InputSpec
from featurizer.settings import InvalidSetting

LIMITS = ImageLimits(max_image_bytes=8 * 1024 * 1024, max_image_pixels=4_000_000)
SPEC = InputSpec()  # resize 256, centre crop 224


def photo(width: int = 320, height: int = 240, mode: str = "RGB") -> Image.Image:
    """A smooth, deterministic test picture (gradients compress like photos, not like noise)."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], -1).astype(np.uint8)
    return Image.fromarray(rgb).convert(mode)


def encode(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def rotated_jpeg(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(photo(300, 200), quality=92, exif=exif.tobytes())


BASELINE = encode(photo(), quality=90)
PROGRESSIVE = encode(photo(), quality=90, progressive=True)
CMYK = encode(photo(mode="CMYK"), quality=90)
GREY = encode(photo(mode="L"), quality=90)
PNG = encode(photo(), "PNG")
WEBP = encode(photo(), "WEBP")


@pytest.mark.parametrize("data, expected", [
    (BASELINE, None), (rotated_jpeg(6), None), (PROGRESSIVE, Fallback.PROGRESSIVE), (CMYK, Fallback.CMYK),
    (GREY, Fallback.GREYSCALE), (PNG, Fallback.NOT_JPEG), (WEBP, Fallback.NOT_JPEG),
], ids=["baseline", "baseline-exif", "progressive", "cmyk", "greyscale", "png", "webp"])
def test_selection_from_probed_headers(data, expected):
    assert fallback_for(probe(data, LIMITS)) is expected


def test_frame_header_read_past_exif_and_adobe_segments():
    assert jpeg_frame(BASELINE).sof == 0xC0 and jpeg_frame(BASELINE).components == 3
    assert jpeg_frame(PROGRESSIVE).sof == 0xC2
    cmyk = jpeg_frame(CMYK)
    assert cmyk.components == 4 and cmyk.adobe
    exif = jpeg_frame(rotated_jpeg(3))
    assert exif.sof == 0xC0 and not exif.adobe
    assert jpeg_frame(BASELINE[:20]) is None  # cut before its frame header


def test_groups_bounded_in_images_and_pixels_in_request_order():
    probes = [(i, probe(BASELINE, LIMITS)) for i in range(10)]  # 320x240 = 76,800 pixels each
    assert [[i for i, _ in g] for g in group(probes, max_images=4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [len(g) for g in group(probes, max_images=64, max_pixels=3 * 76_800)] == [3, 3, 3, 1]
    assert [len(g) for g in group(probes[:2], max_pixels=1000)] == [1, 1]  # larger than a group: alone
    assert group([]) == []


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_as_pil_exif_transpose(orientation):
    data = rotated_jpeg(orientation)
    probed = probe(data, LIMITS)
    assert orientation_of(probed) == orientation
    raw = torch.from_numpy(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).copy()).permute(2, 0, 1)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert torch.equal(orient(raw, orientation), torch.from_numpy(expected.copy()).permute(2, 0, 1))


def test_split_probes_unprobed_files_and_keeps_tensors_for_the_cpu_path():
    array = np.zeros((8, 8, 3), np.uint8)
    entries = [(0, BASELINE), (1, PNG), (2, array), (3, probe(PROGRESSIVE, LIMITS)), (4, rotated_jpeg(8))]
    eligible, rest = split(entries, LIMITS)
    assert [i for i, _ in eligible] == [0, 4]
    assert [i for i, _ in rest] == [1, 2, 3]
    assert rest[1][1] is array


def test_split_refuses_with_the_cpu_paths_statuses():
    small = ImageLimits(max_image_bytes=len(BASELINE) - 1, max_image_pixels=LIMITS.max_image_pixels)
    with pytest.raises(InvalidArgument, match=r"images\[5\]: .* bytes is above the limit"):
        split([(5, BASELINE)], small)
    with pytest.raises(InvalidArgument, match=r"images\[2\]: not a supported image format"):
        split([(2, b"not an image at all")], LIMITS)
    bomb = ImageLimits(max_image_bytes=LIMITS.max_image_bytes, max_image_pixels=1000)
    with pytest.raises(InvalidArgument, match=r"images\[0\]: 320x240 = 76800 pixels is above the limit of 1000"):
        split([(0, BASELINE)], bomb)


def without_quantization_tables(data: bytes) -> bytes:
    """A baseline JPEG whose DQT segments are gone: its header probes fine, decoding it fails."""
    while b"\xff\xdb" in data[:data.index(b"\xff\xda")]:
        dqt = data.index(b"\xff\xdb")
        data = data[:dqt] + data[dqt + 2 + int.from_bytes(data[dqt + 2:dqt + 4], "big"):]
    return data


def prepare(preparer: Preparer, images: list) -> list[torch.Tensor]:
    try:
        return asyncio.run(preparer.prepare(images, SPEC, 1, device_idle=False))
    finally:
        preparer.close()


def test_batch_decoder_gives_the_cpu_paths_tensors_and_falls_back_per_image():
    images = [BASELINE, PROGRESSIVE, rotated_jpeg(6), PNG, CMYK, GREY, rotated_jpeg(3), WEBP]
    expected = prepare(Preparer(LIMITS, 2, 1), images)
    decoder = JpegBatchDecoder(torch.device("cpu"), LIMITS)
    done, rest = decoder.decode_now(list(enumerate(images)), SPEC, 1, lambda: 0.0, None)
    assert [i for i, _ in done] == [0, 2, 6] and [i for i, _ in rest] == [1, 3, 4, 5, 7]
    got = prepare(Preparer(LIMITS, 2, 1, JpegBatchDecoder(torch.device("cpu"), LIMITS)), images)
    for mine, reference in zip(got, expected, strict=True):
        assert mine.shape == (3, 224, 224) and torch.equal(mine, reference)


def test_a_file_the_batch_decoder_refuses_goes_to_the_cpu_decoder_which_names_it():
    broken = without_quantization_tables(BASELINE)
    decoder = JpegBatchDecoder(torch.device("cpu"), LIMITS)
    done, rest = decoder.decode_now([(0, BASELINE), (1, broken), (2, BASELINE)], SPEC, 1, lambda: 0.0, None)
    assert [i for i, _ in done] == [0, 2] and [i for i, _ in rest] == [1]  # the good ones still decoded together
    with pytest.raises(InvalidArgument, match=r"images\[1\]: cannot decode JPEG data"):
        prepare(Preparer(LIMITS, 2, 1, JpegBatchDecoder(torch.device("cpu"), LIMITS)), [BASELINE, broken])


def test_decoding_on_cuda_is_refused_without_cuda():
    assert not torch.cuda.is_available()  # this suite runs on CPU machines
    cpu = Device.create("cpu")
    try:
        assert decode_device("cpu", cpu) is None and batch_decoder("cpu", cpu, LIMITS) is None
        with pytest.raises(InvalidSetting) as refused:
            batch_decoder("cuda", cpu, LIMITS)
        assert refused.value.setting == "decode_device"
        assert "needs CUDA" in refused.value.problem and "--" not in str(refused.value)
    finally:
        cpu.close()


def test_serve_refuses_gpu_decoding_at_start_up(tmp_path):
    done = subprocess.run([sys.executable, "-m", "featurizer", "serve", "--registry", str(tmp_path), "--port", "0",
                           "--metrics-port", "-1", "--device", "cpu", "--decode-device", "cuda"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "--decode-device" in done.stderr and "decoding JPEGs on the GPU needs CUDA" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
