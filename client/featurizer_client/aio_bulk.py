"""The asyncio driver of bulk jobs: ``bulk.py``'s loop with tasks in place of threads.

Same window (``window.py``), same specs, same rules: one image per stream item, ``streams``
concurrent streams, what a broken stream left unanswered sent again on a new one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Optional, Union

import grpc

from .bulk import Dispatch, StreamSpec
from .bulk import apply_policy as bulk_policy
from .errors import FeaturizerError
from .sources import Item
from .window import Failure, OnError, Outcome, Result, Window

if TYPE_CHECKING:
    from .aio import AsyncFeaturizerClient

_END = object()


class _Lane:
    """One stream: requests from an asyncio queue, answers read by a task into the job's events."""

    def __init__(self, open_call: Callable[[AsyncIterator], Any], events: asyncio.Queue) -> None:
        self.sent: deque[Item] = deque()
        self.closed = False
        self._requests: asyncio.Queue = asyncio.Queue()
        self._events = events
        self._call = open_call(self._feed())
        self._reader = asyncio.ensure_future(self._read())

    async def _feed(self) -> AsyncIterator:
        while (request := await self._requests.get()) is not _END:
            yield request

    def send(self, item: Item, request: Any) -> None:
        self.sent.append(item)
        self._requests.put_nowait(request)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._requests.put_nowait(_END)

    def cancel(self) -> None:
        self.close()
        self._call.cancel()
        self._reader.cancel()

    async def _read(self) -> None:
        try:
            async for response in self._call:
                self._events.put_nowait((self, response))
            self._events.put_nowait((self, None))
        except grpc.RpcError as error:
            self._events.put_nowait((self, error))


async def run(client: "AsyncFeaturizerClient", spec: StreamSpec, window: Window, streams: int,
              timeout: Optional[float]) -> AsyncIterator[Outcome]:
    """Every item's outcome, in input order; the decisions are ``bulk.Dispatch``'s."""
    dispatch: Dispatch[_Lane] = Dispatch(spec, window, streams)
    method = getattr(client._stub, spec.method)
    events: asyncio.Queue = asyncio.Queue()
    loop = asyncio.get_running_loop()
    limit = client.timeout if timeout is None else timeout
    await client._connected(limit)

    def new_lane() -> _Lane:
        return _Lane(lambda requests: method(requests, metadata=client.connection.metadata(),
                                             wait_for_ready=client.connection.wait_for_ready), events)

    try:
        while True:
            dispatch.open_lanes(loop.time(), new_lane)
            dispatch.feed()
            for outcome in window.ready():
                yield outcome
            if window.finished:
                await _finish(dispatch.lanes, events, limit)
                return
            try:
                lane, event = await asyncio.wait_for(events.get(), dispatch.wait(loop.time(), limit))
            except asyncio.TimeoutError:
                if dispatch.backing_off:
                    continue
                raise FeaturizerError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                      f"no answer from {client.target} in {limit} s") from None
            dispatch.handle(lane, event, loop.time(), FeaturizerError.from_rpc_error)
    finally:
        for lane in dispatch.lanes:
            lane.cancel()


async def _finish(lanes: list[_Lane], events: asyncio.Queue, limit: Optional[float]) -> None:
    """Half-close every stream and let the server end it (an OK stream, not a CANCELLED one)."""
    for lane in lanes:
        lane.close()
    ending = set(lanes)
    while ending:
        try:
            lane, event = await asyncio.wait_for(events.get(), limit)
        except asyncio.TimeoutError:
            return
        if event is None or isinstance(event, grpc.RpcError):
            ending.discard(lane)
    lanes.clear()


async def apply_policy(outcomes: AsyncIterator[Outcome], on_error: OnError | str) -> AsyncIterator[Union[Result, Failure]]:
    """``bulk.apply_policy`` for an async iterator."""
    async for outcome in outcomes:
        for kept in bulk_policy([outcome], on_error):
            yield kept
