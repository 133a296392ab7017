"""The batcher alone, driven by asyncio.Events: a test decides when each batch may finish.

Nothing here waits on a clock to synchronise: a held batch is how the tests make "a batch is
running" true, and the batch contents show what the batcher decided.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Sequence

import pytest

from featurizer.inference.batcher import Batcher
from featurizer.inference.errors import DeadlineExceeded, InferenceFailed, InvalidArgument, Overloaded, Unavailable

SAFETY_S = 30  # only against hangs; a correct batcher answers in milliseconds
FOREVER_S = 3600.0  # a max_delay no test can wait out: a batch that starts did not wait for it


class Recorder:
    """A BatchObserver that remembers what it was told and lets a test wait for a state."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.drops: dict[str, int] = defaultdict(int)
        self.depth = 0
        self._watches: list[tuple[Callable[[], bool], asyncio.Event]] = []

    def on_queue_depth(self, depth: int) -> None:
        self.depth = depth
        self._check()

    def on_batch(self, size: int, queue_waits: Sequence[float]) -> None:
        self.batches.append(size)

    def on_drop(self, reason: str, count: int) -> None:
        self.drops[reason] += count
        self._check()

    def _check(self) -> None:
        for condition, event in self._watches:
            if condition():
                event.set()

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait until the batcher's reports make ``condition`` true (no clock involved)."""
        event = asyncio.Event()
        self._watches.append((condition, event))
        if condition():
            event.set()
        await asyncio.wait_for(event.wait(), SAFETY_S)

    async def queued(self, depth: int) -> None:
        """Wait until ``depth`` items are queued (the submitting tasks have run)."""
        await self.until(lambda: self.depth >= depth)


class GatedExecute:
    """``execute`` for a Batcher: announces each batch on ``started`` and, when ``hold``, waits
    for ``release[k]`` before answering item x with x * 10."""

    def __init__(self, hold: bool = True) -> None:
        self.hold = hold
        self.batches: list[list] = []
        self.started: asyncio.Queue = asyncio.Queue()
        self.release: defaultdict[int, asyncio.Event] = defaultdict(asyncio.Event)

    async def __call__(self, items: list) -> list:
        k = len(self.batches)
        self.batches.append(list(items))
        self.started.put_nowait(list(items))
        if self.hold:
            await self.release[k].wait()
        if "boom" in items:
            raise RuntimeError("forward pass exploded")
        if "bad" in items:
            raise InvalidArgument("items: a domain error passes through unchanged")
        return [InferenceFailed(f"bucket of {x} failed") if x == "bucket" else x * 10 for x in items]

    async def next_batch(self) -> list:
        return await asyncio.wait_for(self.started.get(), SAFETY_S)


def make(execute, **overrides) -> tuple[Batcher, Recorder]:
    recorder = Recorder()
    settings = dict(name="m@1", max_batch_size=4, max_delay_s=FOREVER_S, max_queue=64) | overrides
    batcher = Batcher(execute, observer=recorder, **settings)
    return batcher, recorder


async def answer(task: asyncio.Task):
    return await asyncio.wait_for(task, SAFETY_S)


async def test_lone_caller_starts_at_once_whatever_the_delay():
    execute = GatedExecute(hold=False)
    batcher, recorder = make(execute, max_delay_s=FOREVER_S)
    assert await asyncio.wait_for(batcher.submit([7]), SAFETY_S) == [70]
    assert execute.batches == [[7]] and recorder.batches == [1]
    await batcher.close()


async def test_next_batch_fills_while_one_runs_and_flushes_on_size():
    execute = GatedExecute()
    batcher, recorder = make(execute, max_batch_size=4)
    first = asyncio.create_task(batcher.submit([1]))
    assert await execute.next_batch() == [1]
    later = [asyncio.create_task(batcher.submit([x])) for x in range(2, 8)]  # 6 items queue up
    await recorder.queued(6)
    execute.release[0].set()
    assert await execute.next_batch() == [2, 3, 4, 5]  # full batch, in arrival order
    execute.release[1].set()
    assert await execute.next_batch() == [6, 7]
    execute.release[2].set()
    assert await answer(first) == [10]
    assert [await answer(t) for t in later] == [[x * 10] for x in range(2, 8)]
    assert recorder.batches == [1, 4, 2]
    await batcher.close()


async def test_with_two_slots_a_partial_batch_waits_for_size_not_forever():
    execute = GatedExecute()
    batcher, _ = make(execute, max_batch_size=3, max_concurrent_batches=2, max_delay_s=FOREVER_S)
    first = asyncio.create_task(batcher.submit([1]))
    assert await execute.next_batch() == [1]  # idle device: no waiting
    second = asyncio.create_task(batcher.submit([2, 3]))
    third = asyncio.create_task(batcher.submit([4]))
    assert await execute.next_batch() == [2, 3, 4]  # started by the third item, not by a timer
    for k in range(2):
        execute.release[k].set()
    assert [await answer(t) for t in (first, second, third)] == [[10], [20, 30], [40]]
    await batcher.close()


async def test_with_two_slots_a_partial_batch_flushes_after_max_delay():
    execute = GatedExecute()
    batcher, recorder = make(execute, max_batch_size=8, max_concurrent_batches=2, max_delay_s=0.02)
    first = asyncio.create_task(batcher.submit([1]))
    assert await execute.next_batch() == [1]
    second = asyncio.create_task(batcher.submit([2, 3]))
    assert await execute.next_batch() == [2, 3]  # batch 1 still held: only the delay can start this
    assert len(execute.batches) == 2 and not first.done()
    execute.release[1].set()
    assert await answer(second) == [20, 30]
    execute.release[0].set()
    assert await answer(first) == [10]
    assert recorder.batches == [1, 2]
    await batcher.close()


async def test_request_larger_than_a_batch_is_split_and_reassembled_in_order():
    execute = GatedExecute(hold=False)
    batcher, recorder = make(execute, max_batch_size=3)
    items = list(range(1, 9))
    assert await asyncio.wait_for(batcher.submit(items), SAFETY_S) == [x * 10 for x in items]
    assert [len(b) for b in execute.batches] == [3, 3, 2]
    assert [x for b in execute.batches for x in b] == items
    assert recorder.batches == [3, 3, 2]
    await batcher.close()


async def test_cancelled_and_expired_items_are_skipped_and_counted():
    execute = GatedExecute()
    batcher, recorder = make(execute)
    first = asyncio.create_task(batcher.submit([1]))
    assert await execute.next_batch() == [1]
    gone = asyncio.create_task(batcher.submit([2, 3]))
    expired = asyncio.create_task(batcher.submit([4], deadline=asyncio.get_running_loop().time()))
    kept = asyncio.create_task(batcher.submit([5]))
    await recorder.queued(4)
    gone.cancel()
    execute.release[0].set()
    assert await execute.next_batch() == [5]  # neither the cancelled nor the expired items ran
    execute.release[1].set()
    assert await answer(kept) == [50]
    with pytest.raises(DeadlineExceeded, match="m@1"):
        await answer(expired)
    assert gone.cancelled()
    assert recorder.drops == {"cancelled": 2, "deadline": 1}
    await answer(first)
    await batcher.close()


async def test_failed_batch_fails_only_its_callers_and_the_batcher_goes_on():
    execute = GatedExecute(hold=False)
    batcher, recorder = make(execute, max_batch_size=1)
    results = await asyncio.gather(batcher.submit(["boom"]), batcher.submit([2]), batcher.submit(["bad"]),
                                   batcher.submit(["bucket"]), return_exceptions=True)
    assert isinstance(results[0], InferenceFailed) and "m@1" in str(results[0])
    assert "exploded" not in str(results[0])  # internals stay in the log
    assert results[1] == [20]
    assert isinstance(results[2], InvalidArgument)  # a domain error keeps its own status
    assert isinstance(results[3], InferenceFailed) and "bucket" in str(results[3])
    assert await asyncio.wait_for(batcher.submit([3]), SAFETY_S) == [30]  # still serving
    await batcher.close()


async def test_one_failed_item_fails_its_request_not_the_batch_neighbours():
    execute = GatedExecute()
    batcher, recorder = make(execute, max_batch_size=8)
    first = asyncio.create_task(batcher.submit([1]))
    await execute.next_batch()
    mixed = asyncio.create_task(batcher.submit([2, "bucket"]))
    clean = asyncio.create_task(batcher.submit([3]))
    await recorder.queued(3)
    execute.release[0].set()
    assert await execute.next_batch() == [2, "bucket", 3]  # one batch, three items
    execute.release[1].set()
    with pytest.raises(InferenceFailed, match="bucket"):
        await answer(mixed)
    assert await answer(clean) == [30]
    await answer(first)
    await batcher.close()


async def test_overload_is_refused_at_once_with_a_clear_message():
    execute = GatedExecute()
    batcher, recorder = make(execute, max_queue=3)
    first = asyncio.create_task(batcher.submit([1]))
    await execute.next_batch()  # item 1 left the queue
    queued = asyncio.create_task(batcher.submit([2, 3]))
    await recorder.queued(2)
    with pytest.raises(Overloaded, match=r"m@1.*2 images queued.*limit 3"):
        await batcher.submit([4, 5])  # raises before awaiting anything: no queue growth
    assert batcher.queue_depth == 2 and recorder.drops == {"overload": 2}
    execute.release[0].set()
    execute.release[1].set()
    assert await answer(queued) == [20, 30]
    await answer(first)
    await batcher.close()


async def test_departed_callers_do_not_count_against_admission():
    execute = GatedExecute()
    batcher, recorder = make(execute, max_queue=3)
    first = asyncio.create_task(batcher.submit([1]))
    await execute.next_batch()  # held: nothing leaves the queue until released
    gone = asyncio.create_task(batcher.submit([2, 3]))
    await recorder.queued(2)
    gone.cancel()
    late = asyncio.create_task(batcher.submit([4, 5]))  # 2 ghosts + 2 would pass the limit of 3
    await recorder.until(lambda: recorder.drops["cancelled"] == 2)  # purged by admission, not by a batch
    assert batcher.queue_depth == 2 and "overload" not in recorder.drops
    execute.release[0].set()
    assert await execute.next_batch() == [4, 5]
    execute.release[1].set()
    assert await answer(late) == [40, 50]
    await answer(first)
    await batcher.close()


async def test_result_count_mismatch_is_an_error_for_every_caller():
    async def short(items: list) -> list:
        return [x * 10 for x in items[:-1]]

    batcher, _ = make(short, max_batch_size=4)
    with pytest.raises(InferenceFailed, match="m@1"):
        await asyncio.wait_for(batcher.submit([1, 2]), SAFETY_S)
    await batcher.close()


async def test_close_fails_queued_callers_with_unavailable_and_refuses_new_ones():
    execute = GatedExecute()
    batcher, recorder = make(execute)
    first = asyncio.create_task(batcher.submit([1]))
    await execute.next_batch()
    queued = asyncio.create_task(batcher.submit([2]))
    await recorder.queued(1)
    closing = asyncio.create_task(batcher.close())
    execute.release[0].set()  # the running batch finishes
    await asyncio.wait_for(closing, SAFETY_S)
    assert await answer(first) == [10]
    with pytest.raises(Unavailable, match="unloaded"):
        await answer(queued)
    with pytest.raises(Unavailable):
        await batcher.submit([3])

