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
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Union

import numpy as np
import torch

from .device import per_thread_intra_op, single_threaded_worker
from .errors import InvalidArgument
from .manifest import InputSpec
from .preprocessing import (ImageLimits, Probe, decode_probed, from_float_chw, from_uint8_hwc, min_side_ok,
                            probe, resize_for)

RawImage = Union[bytes, np.ndarray]
INLINE_MAX_BYTES = 16 * 1024       # larger files are not even probed on the loop
INLINE_MAX_PIXELS = 128 * 128      # decoded and resized pixels allowed on the loop per image


class Preparer:
    """Turns request images into the backbone's uint8 (or float) CHW tensors."""

    def __init__(self, limits: ImageLimits, workers: int, all_threads: int) -> None:
        self.limits = limits
        self.all_threads = all_threads
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preprocess",
                                        initializer=single_threaded_worker)  # parallel across images, not within one
        self._on_pool = 0  # images being prepared on the pool right now

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def prepare(self, images: Sequence[RawImage], spec: InputSpec, min_side: int,
                      device_idle: bool) -> list[torch.Tensor]:
        """One tensor per image, in order. ``device_idle``: the model has nothing queued or running."""
        tensors: list[Optional[torch.Tensor]] = [None] * len(images)
        deferred: list[tuple[int, Union[RawImage, Probe]]] = []
        for i, image in enumerate(images):
            small = self._small(image, spec, f"images[{i}]")
            if small is None:
                deferred.append((i, image))
            elif isinstance(small, Probe):
                deferred.append((i, small))
            else:
                tensors[i] = self._prepare(small, spec, min_side, i)
        if deferred:
            alone = len(deferred) == 1 and self._on_pool == 0 and device_idle and per_thread_intra_op()
            threads = self.all_threads if alone else 1
            loop = asyncio.get_running_loop()
            self._on_pool += len(deferred)
            try:
                done = await asyncio.gather(*(loop.run_in_executor(
                    self._pool, self._prepare_on_pool, image, spec, min_side, i, threads) for i, image in deferred))
            finally:
                self._on_pool -= len(deferred)
            for (i, _), tensor in zip(deferred, done):
                tensors[i] = tensor
        return tensors  # type: ignore[return-value]  # every slot was filled above

    def _small(self, image: RawImage, spec: InputSpec, where: str) -> Union[RawImage, Probe, None]:
        """``image`` itself when it is cheap enough to prepare inline; its ``Probe`` when it was
        probed and is not; None when it is not worth probing here."""
        if isinstance(image, np.ndarray):
            if image.ndim != 3:
                return image  # malformed: refused inline with a clear message, at no cost
            height, width = image.shape[:2] if image.dtype == np.uint8 else image.shape[1:]
            return image if _inline_work(spec, height, width) else None
        if len(image) > INLINE_MAX_BYTES or not _inline_work(spec, 1, 1):
            return None  # a large file, or a model whose input alone is too big to prepare inline
        probed = probe(image, self.limits, where)
        return image if _inline_work(spec, probed.height, probed.width) else probed

    def _prepare_on_pool(self, image: Union[RawImage, Probe], spec: InputSpec, min_side: int, index: int,
                         threads: int) -> torch.Tensor:
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
                raw = decode_probed(image if isinstance(image, Probe) else probe(image, self.limits, where), where)
            tensor = resize_for(raw, spec, self.limits, where)
        min_side_ok(spec, tensor.shape[1], tensor.shape[2], min_side, where)
        return tensor


def _inline_work(spec: InputSpec, height: int, width: int) -> bool:
    """Whether decoding ``height x width`` pixels and resizing them for ``spec`` is small work."""
    if height * width > INLINE_MAX_PIXELS:
        return False
    if spec.mode == "resize_crop":
        short, long = min(height, width), max(height, width)
        return short > 0 and spec.resize * spec.resize * long // short <= INLINE_MAX_PIXELS
    if spec.mode == "resize":
        return spec.height * spec.width <= INLINE_MAX_PIXELS
    return True
