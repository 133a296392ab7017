"""Which thread prepares each image, and with how many cores.

Decoding and resizing (``preprocessing.py``) normally run on a small thread pool so the event loop
keeps serving. Two cases are better served otherwise:

- **Tiny images** (a 32x32 LargeNet input decodes in tens of microseconds) are prepared inline on
  the event loop: the hop to a thread costs more than the work (a future, a self-pipe wake-up,
  GIL hand-offs). 64 LargeNet callers, back-to-back runs: about 1.2-1.4x the images/s
  (``bench/where_time_goes.md``). The work allowed inline is bounded by pixels read from the
  header, so a small file that expands into a large image (a PNG bomb) still goes to the pool.
- **A lone image** (nothing else being prepared, its model's batcher idle) gets every intra-op
  thread for its resize instead of one: under load one thread per image is right, but a lone
  caller would otherwise wait on one core while the others idle.

Two rules keep one caller from starving the others on the pool: a request has at most ``workers``
images on the pool at a time (its next image queues behind images other callers sent meanwhile,
so a 256-image request does not hold a one-image caller for 256 decodes), and an image whose
caller's deadline has passed when a worker picks it up is not decoded. How long one image can
take is bounded by ``preprocessing.probe`` (pixels, bytes, JPEG scans).

``plan`` (headers only) and ``run`` (decoding) are separate steps so that the engine admits a
request to its model's queue between them: bad headers are refused first, overload before any
decoding.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np
import torch

from featurizer.inference.device import per_thread_intra_op, single_threaded_worker
from featurizer.inference.errors import DeadlineExceeded, InvalidArgument
from featurizer.inference.gpu_decode import JpegBatchDecoder
from featurizer.registry.manifest import InputMode, InputSpec
from featurizer.inference.preprocessing import (ImageLimits, Probe, decode_for, from_float_chw, from_uint8_hwc, min_side_ok,
                                                probe, resize_for)

RawImage = Union[bytes, np.ndarray]
INLINE_MAX_BYTES = 16 * 1024       # larger files are not even probed on the loop
INLINE_MAX_PIXELS = 128 * 128      # decoded and resized pixels allowed on the loop per image


@dataclass(frozen=True)
class Plan:
    """A request's images, each to be prepared inline or on the pool (``Preparer.plan``)."""

    count: int
    inline: list[tuple[int, RawImage]]
    deferred: list[tuple[int, Union[RawImage, Probe]]]
    indexes: Optional[tuple[int, ...]] = None  # each image's index in the request (None: 0..count-1)


class Preparer:
    """Turns request images into the backbone's uint8 (or float) CHW tensors."""

    def __init__(self, limits: ImageLimits, workers: int, all_threads: int,
                 decoder: Optional[JpegBatchDecoder] = None) -> None:
        self.limits = limits
        self.decoder = decoder  # JPEGs on the GPU, in batches (gpu_decode.py); None: everything here
        self.workers = workers
        self.all_threads = all_threads
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preprocess",
                                        initializer=single_threaded_worker)  # parallel across images, not within one
        self._on_pool = 0  # images being prepared on the pool right now

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.decoder is not None:
            self.decoder.close()

    async def prepare(self, images: Sequence[RawImage], spec: InputSpec, min_side: int,
                      device_idle: bool, deadline: Optional[float] = None) -> list[torch.Tensor]:
        """One tensor per image, in order: ``plan`` then ``run``."""
        return await self.run(self.plan(images, spec), spec, min_side, device_idle, deadline)

    def plan(self, images: Sequence[RawImage], spec: InputSpec, indexes: Optional[Sequence[int]] = None) -> Plan:
        """Where each image will be prepared, from headers alone (small files only: larger ones are
        not read on the loop). Decodes nothing, so a caller can be admitted (or refused) between
        ``plan`` and ``run``; refuses what a header already shows is bad (InvalidArgument).
        ``indexes``: the images' places in the request, when they are a part of it (the response
        cache's misses), so errors name ``images[i]`` as the caller sent them."""
        inline: list[tuple[int, RawImage]] = []
        deferred: list[tuple[int, Union[RawImage, Probe]]] = []
        numbers = range(len(images)) if indexes is None else indexes
        for i, image in zip(numbers, images, strict=True):
            small = self._small(image, spec, f"images[{i}]")
            if small is None:
                deferred.append((i, image))
            elif isinstance(small, Probe):
                deferred.append((i, small))
            else:
                inline.append((i, small))
        return Plan(len(images), inline, deferred, None if indexes is None else tuple(indexes))

    async def run(self, plan: Plan, spec: InputSpec, min_side: int, device_idle: bool,
                  deadline: Optional[float] = None) -> list[torch.Tensor]:
        """Decode and resize the planned images. ``device_idle``: the model has nothing queued or
        running. ``deadline`` (event-loop clock): images still waiting for a worker then are not decoded."""
        tensors: list[Optional[torch.Tensor]] = [None] * plan.count
        slot = {i: k for k, i in enumerate(plan.indexes or range(plan.count))}  # request index -> result
        for i, image in plan.inline:
            tensors[slot[i]] = self._prepare(image, spec, min_side, i)
        deferred = plan.deferred
        if deferred and self.decoder is not None:  # what nvJPEG takes is decoded there; the rest below
            decoded, deferred = await self.decoder.decode(deferred, spec, min_side, deadline)
            for i, tensor in decoded:
                tensors[slot[i]] = tensor
        if deferred:
            alone = len(deferred) == 1 and self._on_pool == 0 and device_idle and per_thread_intra_op()
            threads = self.all_threads if alone else 1
            loop = asyncio.get_running_loop()
            turns = asyncio.Semaphore(self.workers)  # this request's images on the pool at once

            async def on_pool(i: int, image: Union[RawImage, Probe]) -> torch.Tensor:
                async with turns:
                    return await loop.run_in_executor(self._pool, self._prepare_on_pool, image, spec, min_side, i,
                                                      threads, loop.time, deadline)

            self._on_pool += len(deferred)
            tasks = [asyncio.ensure_future(on_pool(i, image)) for i, image in deferred]
            try:
                done = await asyncio.gather(*tasks)
            except BaseException:
                for task in tasks:  # one image failed or the caller left: the rest are not wanted
                    task.cancel()
                raise
            finally:
                self._on_pool -= len(deferred)
            for (i, _), tensor in zip(deferred, done, strict=True):
                tensors[slot[i]] = tensor
        return tensors  # type: ignore[return-value]  # every slot was filled above

    def _small(self, image: RawImage, spec: InputSpec, where: str) -> Union[RawImage, Probe, None]:
        """``image`` itself when it is cheap enough to prepare inline; its ``Probe`` when it was
        probed and is not; None when it is not worth probing here."""
        if isinstance(image, np.ndarray):
            if image.ndim != 3:
                return image  # malformed: refused inline with a clear message, at no cost
            height, width = image.shape[:2] if image.dtype == np.uint8 else image.shape[1:]
            return image if _inline_work(spec, height, width) else None
        if len(image) > INLINE_MAX_BYTES:
            return None  # a large file: its header is read on the pool
        # Header only (tens of microseconds), even for a model that never prepares inline: a bad
        # small file is refused here, before admission, so overload does not mask a bad request.
        probed = probe(image, self.limits, where)
        return image if _inline_work(spec, probed.height, probed.width) else probed

    def _prepare_on_pool(self, image: Union[RawImage, Probe], spec: InputSpec, min_side: int, index: int,
                         threads: int, clock: Callable[[], float], deadline: Optional[float]) -> torch.Tensor:
        if deadline is not None and clock() >= deadline:  # the caller has gone: decode nothing for it
            raise DeadlineExceeded(f"images[{index}]: the deadline passed before this image was decoded")
        if per_thread_intra_op():
            torch.set_num_threads(threads)
        return self._prepare(image, spec, min_side, index)

    def _prepare(self, image: Union[RawImage, Probe], spec: InputSpec, min_side: int, index: int) -> torch.Tensor:
        """Decode/convert and resize one image for the backbone."""
        where = f"images[{index}]"
        if isinstance(image, np.ndarray) and image.dtype != np.uint8:
            if image.dtype != np.float32:
                raise InvalidArgument(f"{where}: tensor dtype must be uint8 (HWC RGB) or float32 (CHW), got {image.dtype}")
            tensor = from_float_chw(image, spec, self.limits, where)
        else:
            if isinstance(image, np.ndarray):
                raw = from_uint8_hwc(image, self.limits, where)
            else:
                probed = image if isinstance(image, Probe) else probe(image, self.limits, where)
                raw = decode_for(probed, spec, spec.decode, where)  # spec.decode: the model's or the request's
            tensor = resize_for(raw, spec, self.limits, where)
        min_side_ok(spec, tensor.shape[1], tensor.shape[2], min_side, where)
        return tensor


def _inline_work(spec: InputSpec, height: int, width: int) -> bool:
    """Whether decoding ``height x width`` pixels and resizing them for ``spec`` is small work."""
    if height * width > INLINE_MAX_PIXELS:
        return False
    if spec.mode is InputMode.RESIZE_CROP:
        short, long = min(height, width), max(height, width)
        return short > 0 and spec.short_side * spec.short_side * long // short <= INLINE_MAX_PIXELS
    if spec.mode is InputMode.RESIZE:
        return spec.target[0] * spec.target[1] <= INLINE_MAX_PIXELS
    return True
