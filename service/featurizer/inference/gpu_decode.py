"""JPEG decoding on the GPU (nvJPEG), in batches, with the CPU path as the fall-back.

On a GPU the forward pass stops being the bottleneck: AlexNet ``features`` at fp16 does tens of
thousands of images/s, while one CPU core decodes and resizes a JPEG in 3-90 ms (90 ms for a
12-megapixel photo). So with decoding on CUDA, the JPEGs nvJPEG takes are decoded by
``torchvision.io.decode_jpeg(list, device=...)`` in one call per group and resized/cropped there
with the same preset (torchvision's resize and centre crop, as ``preprocessing.resize_for``).

Everything else stays on the CPU path, per image: other formats, progressive and non-baseline
JPEGs, CMYK/YCCK (Adobe) and greyscale JPEGs, and any JPEG whose GPU decode raises (the CPU
decoder then gives the same InvalidArgument a CPU server gives). Headers are probed on the CPU
first (``preprocessing.probe``), so the limits and their statuses are exactly the CPU path's.
Which image goes where is ``fallback_for``, a pure function of the probed header.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from typing import Callable, Optional, Union

import numpy as np
import torch
import torchvision.transforms.functional as TF  # the preset's functions; on CUDA they interpolate in float
from torchvision.io import ImageReadMode, decode_jpeg

from featurizer.inference.device import Device, bind_thread, decode_device, finish_queued_work
from featurizer.inference.errors import DeadlineExceeded
from featurizer.inference.preprocessing import ImageLimits, Probe, _check_resized, min_side_ok, probe
from featurizer.registry.manifest import InputSpec

Entry = tuple[int, Union[bytes, np.ndarray, Probe]]  # (index in the request, image), as Preparer defers them
MAX_GROUP_IMAGES = 64             # one nvJPEG call decodes at most this many images ...
MAX_GROUP_PIXELS = 256_000_000    # ... or this many pixels (~770 MB of RGB), whichever comes first
_ORIENTATION_TAG = 0x0112
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


class Fallback(StrEnum):
    """Why an image is decoded on the CPU rather than by nvJPEG."""

    NOT_JPEG = "not a JPEG"
    PROGRESSIVE = "progressive JPEG"
    NOT_BASELINE = "lossless, arithmetic-coded or hierarchical JPEG"
    CMYK = "CMYK or YCCK JPEG"
    GREYSCALE = "greyscale JPEG"
    NO_FRAME = "JPEG without a readable frame header"
    GPU_REFUSED = "the GPU decoder refused it"


@dataclass(frozen=True)
class JpegFrame:
    """What a JPEG's headers say about how it is coded (read before its first scan)."""

    sof: int          # the start-of-frame marker's second byte: 0xC0 baseline, 0xC2 progressive, ...
    components: int   # 1 greyscale, 3 YCbCr (or RGB), 4 CMYK/YCCK
    adobe: bool       # an Adobe APP14 segment: its colour transform is one nvJPEG does not apply


def jpeg_frame(data: bytes) -> Optional[JpegFrame]:
    """The frame header of a JPEG, walking its marker segments up to the first scan; None when
    there is no readable frame header before it."""
    pos, end, adobe = 2, len(data), False
    while pos + 4 <= end and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan: no frame header came first
            return None
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xEE and data[pos + 4:pos + 9] == b"Adobe":
            adobe = True
        if marker in _SOF_MARKERS:
            if pos + 10 > end:
                return None
            return JpegFrame(marker, data[pos + 9], adobe)
        pos += 2 + length
    return None


def orientation_of(probed: Probe) -> int:
    """The EXIF orientation (1-8; 1 when absent or out of range), which nvJPEG does not apply."""
    try:
        value = int(probed.pil.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # an unreadable EXIF block: the CPU decoder ignores it too
        return 1
    return value if 1 <= value <= 8 else 1


def fallback_for(probed: Probe) -> Optional[Fallback]:
    """None when nvJPEG should decode this probed image; otherwise why the CPU path does."""
    if probed.kind != "JPEG":
        return Fallback.NOT_JPEG
    frame = jpeg_frame(probed.data)
    if frame is None:
        return Fallback.NO_FRAME
    if frame.sof == 0xC2:
        return Fallback.PROGRESSIVE
    if frame.sof not in (0xC0, 0xC1):
        return Fallback.NOT_BASELINE
    if frame.components == 4 or frame.adobe:
        return Fallback.CMYK
    if frame.components != 3:
        return Fallback.GREYSCALE
    return None


def group(probes: Sequence[tuple[int, Probe]], max_images: int = MAX_GROUP_IMAGES,
          max_pixels: int = MAX_GROUP_PIXELS) -> list[list[tuple[int, Probe]]]:
    """Consecutive groups for one nvJPEG call each, bounded in images and in decoded pixels (an
    image above ``max_pixels`` alone is a group of its own)."""
    groups: list[list[tuple[int, Probe]]] = []
    current: list[tuple[int, Probe]] = []
    pixels = 0
    for entry in probes:
        size = entry[1].width * entry[1].height
        if current and (len(current) >= max_images or pixels + size > max_pixels):
            groups.append(current)
            current, pixels = [], 0
        current.append(entry)
        pixels += size
    if current:
        groups.append(current)
    return groups


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """A CHW tensor turned upright as EXIF ``orientation`` says (as PIL's ``exif_transpose``)."""
    if orientation in (5, 6, 7, 8):
        image = image.transpose(-2, -1)  # 5: transpose; the others are a flip of it
        flips = {5: (), 6: (-1,), 7: (-2, -1), 8: (-2,)}[orientation]
    else:
        flips = {1: (), 2: (-1,), 3: (-2, -1), 4: (-2,)}[orientation]
    return image.flip(flips).contiguous() if flips else image.contiguous()


def split(deferred: Sequence[Entry], limits: ImageLimits) -> tuple[list[tuple[int, Probe]], list[Entry]]:
    """Probe what was not probed yet (the CPU path's limits and statuses: InvalidArgument naming
    the image) and split the images into nvJPEG's and the CPU path's, each in request order."""
    eligible: list[tuple[int, Probe]] = []
    rest: list[Entry] = []
    for i, image in deferred:
        if isinstance(image, np.ndarray):
            rest.append((i, image))
            continue
        probed = image if isinstance(image, Probe) else probe(image, limits, f"images[{i}]")
        if fallback_for(probed) is None:
            eligible.append((i, probed))
        else:
            rest.append((i, probed))
    return eligible, rest


def resize_on_device(image: torch.Tensor, spec: InputSpec, limits: ImageLimits, where: str) -> torch.Tensor:
    """The preset's resize (antialiased) and centre crop where ``image`` lies, with the CPU path's
    limit on the resized intermediate. ``preprocessing.resize_for`` is tuned for CPU memory (float
    chunks in host buffers), so the GPU calls torchvision's functions directly."""
    if spec.mode == "native" or spec.size is None:
        return image
    if spec.mode == "resize_crop" and spec.resize is not None:
        _check_resized(image.shape[1], image.shape[2], spec.resize, limits, where)
        image = TF.resize(image, [spec.resize], antialias=True)
        return TF.center_crop(image, list(spec.size))
    return TF.resize(image, list(spec.size), antialias=True)


class JpegBatchDecoder:
    """Takes the JPEGs nvJPEG can decode out of a request's deferred images and decodes them on
    ``device`` in batches. One thread: decoding calls are serialised (the GPU runs one at a time
    anyway) and kept off the event loop; probing a large file's header happens there too.
    On a CPU ``device`` the same steps run with libjpeg-turbo, which is how CI tests them."""

    def __init__(self, device: torch.device, limits: ImageLimits) -> None:
        self.device = device
        self.limits = limits
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nvjpeg")
        self._thread.submit(bind_thread, device).result()

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)

    async def decode(self, deferred: Sequence[Entry], spec: InputSpec, min_side: int,
                     deadline: Optional[float] = None) -> tuple[list[tuple[int, torch.Tensor]], list[Entry]]:
        """(decoded on the GPU, the rest for the CPU path, as Probes where probed here)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self.decode_now, deferred, spec, min_side, loop.time, deadline)

    def decode_now(self, deferred: Sequence[Entry], spec: InputSpec, min_side: int,
                   clock: Callable[[], float], deadline: Optional[float]) -> tuple[list[tuple[int, torch.Tensor]], list[Entry]]:
        if deadline is not None and clock() >= deadline:
            raise DeadlineExceeded("the deadline passed before the images were decoded")
        eligible, rest = split(deferred, self.limits)
        done: list[tuple[int, torch.Tensor]] = []
        for members in group(eligible):
            for (i, probed), image in zip(members, self._decode_group([p for _, p in members]), strict=True):
                if image is None:
                    rest.append((i, probed))  # nvJPEG refused it: the CPU decoder decides
                    continue
                where = f"images[{i}]"
                tensor = resize_on_device(orient(image, orientation_of(probed)), spec, self.limits, where)
                min_side_ok(spec, tensor.shape[1], tensor.shape[2], min_side, where)
                done.append((i, tensor))
        if done:
            finish_queued_work(self.device)  # final before the inference thread reads them
        return done, rest

    def _decode_group(self, probes: Sequence[Probe]) -> list[Optional[torch.Tensor]]:
        """One nvJPEG call; if it raises, one call per image, None for each image it refuses."""
        buffers = [torch.frombuffer(bytearray(p.data), dtype=torch.uint8) for p in probes]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's decoders announce their deprecation
            try:
                return list(decode_jpeg(buffers, mode=ImageReadMode.RGB, device=self.device))
            except Exception:  # one bad file fails the whole call: find which, image by image
                return [self._decode_one(buffer) for buffer in buffers]

    def _decode_one(self, buffer: torch.Tensor) -> Optional[torch.Tensor]:
        try:
            return decode_jpeg([buffer], mode=ImageReadMode.RGB, device=self.device)[0]
        except Exception:  # nvJPEG refuses it; the CPU decoder accepts it or names what is wrong
            return None


def batch_decoder(where: str, serving: Device, limits: ImageLimits) -> Optional[JpegBatchDecoder]:
    """The decoder for a ``decode_device`` setting: None for the CPU; refuses CUDA on a machine
    without it (ValueError, from ``device.decode_device``)."""
    device = decode_device(where, serving)
    return None if device is None else JpegBatchDecoder(device, limits)
