"""Large jobs: inputs split into chunks, at most ``max_in_flight`` calls at once, results in order.

Both clients keep a window of calls in flight (gRPC futures or asyncio tasks) and wait for the
oldest before sending more, so results come back in input order and memory stays bounded: only
the chunks in flight are held as encoded messages, files are read as their chunk is sent.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any, Optional, TypeVar

import numpy as np

from .errors import FeaturizerError
from .inputs import ImageLike, expand_inputs, to_image
from .sources import Source, source_of
from .v1 import featurizer_pb2 as pb
from .window import located

T = TypeVar("T")
DEFAULT_BATCH_SIZE = 64
DEFAULT_MAX_IN_FLIGHT = 4


def plan(images: ImageLike | Iterable[ImageLike]) -> tuple[Iterable[ImageLike], Optional[int]]:
    """Single images to send and their count (None for a one-pass iterator, left lazy)."""
    if isinstance(images, Iterator):
        return expand_inputs(images), None
    items = list(expand_inputs(images))
    return items, len(items)


@dataclass(frozen=True)
class Chunk:
    """One call's images, with where they sit in the whole job (to name a bad one by its place)."""

    start: int
    sources: list[Source]
    images: list[pb.Image]

    def locate(self, error: FeaturizerError) -> FeaturizerError:
        """The server says "images[6]" (its place in this call): say "images[70] (cat.jpg)"."""
        return located(error, self.start, self.sources)


def chunks(items: Iterable[ImageLike], batch_size: int) -> Iterator[Chunk]:
    """Consecutive chunks of at most ``batch_size`` Image messages, read and encoded lazily."""
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    iterator = iter(items)
    start = 0
    while values := list(islice(iterator, batch_size)):
        yield Chunk(start, [source_of(v, start + i) for i, v in enumerate(values)], [to_image(v) for v in values])
        start += len(values)


def concat_rows(arrays: list[np.ndarray]) -> np.ndarray:
    """The chunks' ``[n, ...]`` arrays as one ``[N, ...]`` array, in order."""
    if not arrays:
        raise ValueError("images: at least one image is required")
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def check_window(max_in_flight: int) -> None:
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight: expected >= 1, got {max_in_flight}")


def ordered_calls(submit: Callable[[list[pb.Image]], Any], batches: Iterable[Chunk],
                  max_in_flight: int, progress: "Progress") -> Iterator[Any]:
    """Sync window: ``submit`` returns a gRPC future; yields each chunk's response in order."""
    check_window(max_in_flight)
    pending: deque = deque()
    try:
        for batch in batches:
            if len(pending) >= max_in_flight:
                yield _done(pending.popleft(), progress)
            pending.append((batch, submit(batch.images)))
        while pending:
            yield _done(pending.popleft(), progress)
    finally:
        for _, future in pending:  # a failed chunk (or an abandoned job) cancels the others
            future.cancel()


def _done(entry: tuple[Chunk, Any], progress: "Progress") -> Any:
    chunk, future = entry
    try:
        result = future.result()
    except FeaturizerError as error:
        raise chunk.locate(error) from None
    progress.update(len(chunk.images))
    return result


async def ordered_calls_async(submit: Callable[[list[pb.Image]], Awaitable[T]], batches: Iterable[Chunk],
                              max_in_flight: int, progress: "Progress") -> AsyncIterator[T]:
    """Async window: like ``ordered_calls`` with asyncio tasks."""
    check_window(max_in_flight)
    pending: deque[tuple[Chunk, asyncio.Task]] = deque()
    try:
        for batch in batches:
            if len(pending) >= max_in_flight:
                yield await _done_async(pending.popleft(), progress)
            pending.append((batch, asyncio.ensure_future(submit(batch.images))))
        while pending:
            yield await _done_async(pending.popleft(), progress)
    finally:
        for _, task in pending:
            task.cancel()


async def _done_async(entry: tuple[Chunk, asyncio.Task], progress: "Progress") -> Any:
    chunk, task = entry
    try:
        result = await task
    except FeaturizerError as error:
        raise chunk.locate(error) from None
    progress.update(len(chunk.images))
    return result


class Progress:
    """A tqdm bar when asked for (tqdm is the optional ``progress`` extra), else nothing."""

    def __init__(self, enabled: bool, total: Optional[int], unit: str = "img", initial: int = 0) -> None:
        self._bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                raise ImportError("progress=True needs tqdm: pip install 'featurizer-client[progress]'") from None
            self._bar = tqdm(total=total, unit=unit, initial=initial)

    def update(self, count: int) -> None:
        if self._bar is not None:
            self._bar.update(count)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()
