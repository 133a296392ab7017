"""Dynamic batching: many callers' images -> one forward pass per batch.

One ``Batcher`` per backbone version. Callers ``submit`` items (one per image); one background
task owns the queue and starts a batch as soon as the device has a free slot, with whatever is
queued (up to ``max_batch_size``), so a lone caller never waits for a timer, and while a batch
runs the next one fills up (continuous batching). With more than one slot, a batch that is not
full waits at most ``max_delay`` for company. Admission is bounded by ``max_queue``: images
queued plus images a caller is still preparing (``admit`` claims their room before decoding, so
an overloaded model refuses a request without decoding its images).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Optional, Protocol, TypeVar

from featurizer.inference.errors import DeadlineExceeded, FeaturizerError, InferenceFailed, Overloaded, Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class BatchObserver(Protocol):
    """What the batcher reports (metrics implement this; tests may record it)."""

    def on_queue_depth(self, depth: int) -> None: ...
    def on_batch(self, size: int, queue_waits: Sequence[float]) -> None: ...
    def on_drop(self, reason: str, count: int) -> None: ...


class _NullObserver:
    def on_queue_depth(self, depth: int) -> None: ...
    def on_batch(self, size: int, queue_waits: Sequence[float]) -> None: ...
    def on_drop(self, reason: str, count: int) -> None: ...


@dataclass(eq=False)
class _Pending(Generic[T]):
    """One queued item: its caller waits on ``future``. Times are on the event loop's clock."""

    item: T
    future: asyncio.Future
    deadline: Optional[float]  # after this the caller has gone: drop, don't compute
    enqueued: float


class Admission:
    """Queue room claimed for a request's images while they are prepared (``Batcher.admit``).
    ``submit`` consumes it; ``release`` gives back what is left (idempotent: call it in ``finally``)."""

    def __init__(self, batcher: "Batcher", count: int) -> None:
        self._batcher = batcher
        self.count = count

    def release(self) -> None:
        if self.count:
            self._batcher._reserved -= self.count
            self.count = 0


class Batcher(Generic[T, R]):
    """Groups items of many callers into batches for ``execute(items) -> results`` (same length)."""

    def __init__(self, execute: Callable[[list[T]], Awaitable[list[R]]], *, name: str,
                 max_batch_size: int, max_delay_s: float, max_queue: int, max_concurrent_batches: int = 1,
                 observer: Optional[BatchObserver] = None) -> None:
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._execute = execute
        self._observer = observer or _NullObserver()
        self._queue: deque[_Pending[T]] = deque()
        self._reserved = 0  # images admitted but still being prepared
        self._slots = asyncio.Semaphore(max_concurrent_batches)
        self._running = 0
        self._wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._loop_task: Optional[asyncio.Task] = None
        self._closed = False

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def idle(self) -> bool:
        """Nothing queued and no batch running."""
        return not self._queue and self._running == 0

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.name}")
            self._loop_task.add_done_callback(self._on_loop_done)

    def _on_loop_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:  # a bug: say so loudly, don't hang callers
            log.error("batcher of model %s stopped", self.name, exc_info=task.exception())
            self._closed = True
            self._fail_queued(InferenceFailed(f"the batcher of model {self.name} stopped; the server log has details"))

    def admit(self, count: int) -> Admission:
        """Claim queue room for ``count`` images before they are decoded; raises Overloaded (or
        Unavailable) at once, before any work is spent on the request."""
        self._check_room(count)
        self._reserved += count
        return Admission(self, count)

    async def submit(self, items: Sequence[T], *, deadline: Optional[float] = None,
                     admission: Optional[Admission] = None) -> list[R]:
        """Queue the items (one per image) and wait for their results, in order.

        Raises Overloaded at once when the queue is full (unless ``admission`` already holds room
        for them); cancelling the caller cancels its queued items, which are then skipped, not computed."""
        admitted = admission is not None and admission.count >= len(items)
        if admission is not None:
            admission.release()  # its room becomes queue entries below, in the same step
        if self._closed or not admitted:
            self._check_room(len(items))
        loop = asyncio.get_running_loop()
        now = loop.time()
        pending = [_Pending(item, loop.create_future(), deadline, now) for item in items]
        self._queue.extend(pending)
        self._observer.on_queue_depth(len(self._queue))
        self._wakeup.set()
        self.start()
        try:
            if len(pending) == 1:  # most requests carry one image: skip gather's extra future
                return [await pending[0].future]
            return list(await asyncio.gather(*(p.future for p in pending)))
        except BaseException:
            for p in pending:  # one failed or we were cancelled: the rest are not wanted
                if not p.future.done():
                    p.future.cancel()
            raise

    def _check_room(self, count: int) -> None:
        if self._closed:
            raise Unavailable(f"model {self.name} is unloading; retry")
        if len(self._queue) + self._reserved + count > self.max_queue:
            self._purge_departed()
        if len(self._queue) + self._reserved + count > self.max_queue:
            self._observer.on_drop("overload", count)
            raise Overloaded(f"model {self.name} is overloaded: {len(self._queue)} images queued, "
                             f"{self._reserved} being prepared, limit {self.max_queue}; retry later")

    async def _run(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                batch = await self._collect()
            except BaseException:
                self._slots.release()
                raise
            if not batch:
                self._slots.release()
                continue
            self._running += 1
            task = asyncio.get_running_loop().create_task(self._run_batch(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _collect(self) -> list[_Pending[T]]:
        """Wait for items. An idle device takes what is queued at once; while another batch runs
        (more than one slot), wait up to max_delay after the oldest item for a full batch."""
        loop = asyncio.get_running_loop()
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        while self._running > 0 and len(self._queue) < self.max_batch_size:
            while self._queue and self._queue[0].future.done():  # the oldest caller left: not its clock
                self._queue.popleft()
                self._observer.on_drop("cancelled", 1)
            if not self._queue:
                break
            remaining = self._queue[0].enqueued + self.max_delay_s - loop.time()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)  # the timeout shrinks each round
            except asyncio.TimeoutError:
                break
        return self._take()

    def _take(self) -> list[_Pending[T]]:
        """Pop up to max_batch_size live items; departed ones on the way are dropped and counted."""
        now = asyncio.get_running_loop().time()
        batch: list[_Pending[T]] = []
        drops: Counter[str] = Counter()
        while self._queue and len(batch) < self.max_batch_size:
            p = self._queue.popleft()
            reason = self._departed(p, now)
            if reason:
                drops[reason] += 1
            else:
                batch.append(p)
        self._report(drops)
        return batch

    def _purge_departed(self) -> None:
        """Drop every departed item now (before refusing a caller for a queue full of ghosts)."""
        now = asyncio.get_running_loop().time()
        drops: Counter[str] = Counter()
        live: deque[_Pending[T]] = deque()
        for p in self._queue:
            reason = self._departed(p, now)
            if reason:
                drops[reason] += 1
            else:
                live.append(p)
        self._queue = live
        self._report(drops)

    def _departed(self, p: _Pending[T], now: float) -> str:
        """Why this item's caller no longer wants it ("" = still wanted); fails expired ones."""
        if p.future.done():  # caller cancelled (or a sibling item failed)
            return "cancelled"
        if p.deadline is not None and now >= p.deadline:
            p.future.set_exception(DeadlineExceeded(f"deadline passed while queued for model {self.name}"))
            return "deadline"
        return ""

    def _report(self, drops: Counter[str]) -> None:
        for reason, count in drops.items():
            self._observer.on_drop(reason, count)
        self._observer.on_queue_depth(len(self._queue))

    async def _run_batch(self, batch: list[_Pending[T]]) -> None:
        started = asyncio.get_running_loop().time()
        self._observer.on_batch(len(batch), [started - p.enqueued for p in batch])
        try:
            results = await self._execute([p.item for p in batch])
            if len(results) != len(batch):  # rows would go to the wrong callers: fail them all
                raise RuntimeError(f"batch of {len(batch)} items produced {len(results)} results")
        except Exception as error:
            if not isinstance(error, FeaturizerError):
                log.exception("batch of %d for model %s failed", len(batch), self.name)
                error = InferenceFailed(f"inference failed for model {self.name}; the server log has details")
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(error)
        else:
            for p, result in zip(batch, results, strict=True):  # lengths checked above
                if p.future.done():
                    continue
                if isinstance(result, BaseException):  # this item's group failed, not the batch
                    p.future.set_exception(result)
                else:
                    p.future.set_result(result)
        finally:
            self._running -= 1
            self._slots.release()
            self._wakeup.set()

    async def close(self) -> None:
        """Stop admitting and batching, let running batches finish, fail what is still queued."""
        self._closed = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._fail_queued(Unavailable(f"model {self.name} was unloaded before this request ran; retry"))

    def _fail_queued(self, error: FeaturizerError) -> None:
        while self._queue:
            p = self._queue.popleft()
            if not p.future.done():
                p.future.set_exception(error)
        self._observer.on_queue_depth(0)
