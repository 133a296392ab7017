"""Bulk jobs over ``EmbedStream`` / ``PredictStream``: one image per stream item, answers in order.

One image per item because the server answers per item: a corrupt file costs its own row and its
neighbours are served. The server batches the items of every stream together, so nothing is lost
by not batching here. ``streams`` concurrent streams (2 by default) let round_robin spread one
job over several replicas; the ``Window`` (``window.py``) keeps at most ``max_in_flight`` items
between "read" and "handed back", re-sends what a broken stream left unanswered, and puts every
answer back in input order.

This module is the blocking driver: one reader thread per stream, the caller's thread decides.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Generic, Optional, Protocol, TypeVar, Union

import grpc
import numpy as np

from .errors import FeaturizerError
from .inputs import ImageLike, expand_inputs
from .messages import (DecodeName, EmbedOptions, decode_to_proto, embed_request, embeddings_of, predict_request,
                       predictions_of)
from .sources import Item, Source
from .v1 import featurizer_pb2 as pb
from .window import RETRY_CODES, Duplicate, Failure, ItemFailure, OnError, Outcome, Result, Window

if TYPE_CHECKING:
    from .client import FeaturizerClient

T = TypeVar("T")
_END = object()
_BACKOFF_S = (0.2, 0.4, 0.8, 1.6, 3.2, 5.0)


@dataclass(frozen=True)
class StreamSpec:
    """One kind of stream: its method name, how an item becomes a request, an answer a value."""

    method: str
    request: Callable[[str, pb.Image], Any]
    value: Callable[[Any], Any]


def embed_spec(model: str, version: int, options: EmbedOptions, decode: Optional[DecodeName] = None) -> StreamSpec:
    options.to_proto()  # a bad option is a ValueError now, not 10,000 per-item errors later
    decode_to_proto(decode)
    return StreamSpec("EmbedStream",
                      lambda id, image: pb.EmbedStreamRequest(
                          id=id, request=embed_request(model, version, [image], options, decode)),
                      lambda response: embeddings_of(response)[0])


def predict_spec(model: str, version: int, top_k: int, features: Optional[EmbedOptions],
                 decode: Optional[DecodeName] = None) -> StreamSpec:
    decode_to_proto(decode)
    return StreamSpec("PredictStream",
                      lambda id, image: pb.PredictStreamRequest(
                          id=id, request=predict_request(model, version, [image], top_k, features, decode)),
                      lambda response: predictions_of(response)[0])


def item_code(error: pb.ItemError) -> grpc.StatusCode:
    return next((c for c in grpc.StatusCode if c.value[0] == error.code), grpc.StatusCode.UNKNOWN)


def backoff(failures: int) -> float:
    return _BACKOFF_S[min(failures, len(_BACKOFF_S)) - 1] if failures else 0.0


def apply_policy(outcomes: Iterable[Outcome], on_error: OnError | str) -> Iterator[Union[Result, Failure]]:
    """``raise``: stop at the first failure; ``skip``: drop failures; ``collect``: keep them in place."""
    policy = OnError(on_error)
    for outcome in outcomes:
        assert not isinstance(outcome, Duplicate), "only jobs de-duplicate, and their writer resolves duplicates"
        if isinstance(outcome, Failure):
            if policy is OnError.RAISE:
                raise ItemFailure(outcome)
            if policy is OnError.SKIP:
                continue
        yield outcome


@dataclass(frozen=True)
class Collected(Generic[T]):
    """A whole job in memory: ``values[i]`` came from ``sources[i]``; ``failures`` beside them."""

    values: T
    sources: list[Source]
    failures: list[Failure]


def collect(outcomes: Iterable[Union[Result, Failure]], stack: bool) -> Collected:
    values: list = []
    sources: list[Source] = []
    failures: list[Failure] = []
    for outcome in outcomes:
        if isinstance(outcome, Failure):
            failures.append(outcome)
        else:
            values.append(outcome.value)
            sources.append(outcome.source)
    if stack:
        return Collected(np.stack(values) if values else np.zeros((0, 0), np.float32), sources, failures)
    return Collected(values, sources, failures)


def inputs_of(images: ImageLike | Iterable[ImageLike]) -> Iterator[ImageLike]:
    """Single inputs (directories and globs expanded, sorted), not read."""
    return expand_inputs(images)


def describe(method: str, model: str, version: int, options: Optional[EmbedOptions],
             decode: Optional[DecodeName] = None, **extra: Any) -> dict:
    """What a job asks for, as the journal fingerprints it. ``decode`` only when set, so a job
    journalled before the option existed still resumes."""
    return {"method": method, "model": model, "version": version,
            "options": None if options is None else asdict(options), **({"decode": decode} if decode else {}), **extra}


class _Lane:
    """One stream: requests fed from a queue, answers read by a thread into the job's events."""

    def __init__(self, open_call: Callable[[Iterator], Any], events: queue.Queue) -> None:
        self.sent: deque[Item] = deque()
        self.closed = False
        self._requests: queue.Queue = queue.Queue()
        self._events = events
        self._call = open_call(iter(self._requests.get, _END))
        threading.Thread(target=self._read, name="featurizer-bulk-stream", daemon=True).start()

    def send(self, item: Item, request: Any) -> None:
        self.sent.append(item)
        self._requests.put(request)

    def close(self) -> None:
        """No more requests: the server finishes what it has, then ends the stream."""
        if not self.closed:
            self.closed = True
            self._requests.put(_END)

    def cancel(self) -> None:
        self.close()
        self._call.cancel()

    def _read(self) -> None:
        try:
            for response in self._call:
                self._events.put((self, response))
            self._events.put((self, None))
        except grpc.RpcError as error:
            self._events.put((self, error))


class Lane(Protocol):
    """One open stream, as ``Dispatch`` sees it (a thread-fed ``_Lane`` here, a task-fed one in aio_bulk)."""

    sent: deque[Item]
    closed: bool

    def send(self, item: Item, request: Any) -> None: ...
    def close(self) -> None: ...


L = TypeVar("L", bound=Lane)


class Dispatch(Generic[L]):
    """The I/O-free decisions of one bulk job, shared by the blocking and the asyncio driver: which
    stream takes the next item, what an answer or a broken stream means, when to open a new one.

    ``now`` arguments are seconds on the driver's monotonic clock."""

    def __init__(self, spec: StreamSpec, window: Window, streams: int) -> None:
        if streams < 1:
            raise ValueError(f"streams: expected >= 1, got {streams}")
        self.spec, self.window, self.streams = spec, window, streams
        self.lanes: list[L] = []
        self._failures = 0          # streams broken in a row: the backoff grows with them
        self._reopen_at = 0.0

    def open_lanes(self, now: float, new_lane: Callable[[], L]) -> None:
        while now >= self._reopen_at and sum(not lane.closed for lane in self.lanes) < self.streams:
            self.lanes.append(new_lane())

    def feed(self) -> None:
        """Hand items to the least loaded open stream while the window lets more out."""
        while (lane := min((lane for lane in self.lanes if not lane.closed), key=lambda lane: len(lane.sent),
                           default=None)) is not None and (item := self.window.take()) is not None:
            lane.send(item, self.spec.request(str(item.index), item.load()))  # loaded by window.take
            self.window.sent_one(item)

    @property
    def backing_off(self) -> bool:
        """No stream is open: the driver waits for ``wait()`` and opens one."""
        return not any(not lane.closed for lane in self.lanes)

    def wait(self, now: float, limit: Optional[float]) -> Optional[float]:
        """How long the driver may wait for the next event."""
        return max(self._reopen_at - now, 0.0) if self.backing_off else limit

    def handle(self, lane: L, event: Any, now: float, to_error: Callable[[grpc.RpcError], FeaturizerError]) -> None:
        """One event of ``lane``: an answer, the stream's end (None) or its failure (an RpcError)."""
        if lane not in self.lanes:
            return  # a stream already given up on
        if event is None or isinstance(event, grpc.RpcError):
            self._ended(lane, None if event is None else to_error(event), now)
        else:
            self._answered(lane, event, now)

    def _ended(self, lane: L, error: Optional[FeaturizerError], now: float) -> None:
        self.lanes.remove(lane)
        if not lane.sent:
            return
        error = error or FeaturizerError(grpc.StatusCode.UNAVAILABLE, "the stream ended before answering every item")
        if error.code not in RETRY_CODES:
            raise error
        for unanswered in lane.sent:
            self.window.retry(unanswered, error)
        self._back_off(now)

    def _answered(self, lane: L, event: Any, now: float) -> None:
        item = lane.sent.popleft()
        if event.id != str(item.index):
            raise FeaturizerError(grpc.StatusCode.INTERNAL, f"stream answered id {event.id!r} "
                                                            f"where {item.index} was expected")
        if not event.HasField("error"):
            self._failures = 0
            self.window.answered(item, self.spec.value(event.response))
            return
        code = item_code(event.error)
        self.window.failed(item, code, event.error.message)
        if code in RETRY_CODES and not lane.closed:
            lane.close()  # this replica is going away (or full): the next stream goes elsewhere
            self._back_off(now)

    def _back_off(self, now: float) -> None:
        self._failures += 1
        self._reopen_at = now + backoff(self._failures)


def run(client: "FeaturizerClient", spec: StreamSpec, window: Window, streams: int,
        timeout: Optional[float]) -> Iterator[Outcome]:
    """Every item's outcome, in input order. ``timeout``: the longest wait for any answer."""
    dispatch: Dispatch[_Lane] = Dispatch(spec, window, streams)
    method = getattr(client._stub, spec.method)
    events: queue.Queue = queue.Queue()
    limit = client.timeout if timeout is None else timeout
    client._connected(limit)  # an unreachable target fails in seconds, naming it

    def new_lane() -> _Lane:
        return _Lane(lambda requests: method(requests, metadata=client.connection.metadata(),
                                             wait_for_ready=client.connection.wait_for_ready), events)

    try:
        while True:
            dispatch.open_lanes(time.monotonic(), new_lane)
            dispatch.feed()
            yield from window.ready()
            if window.finished:
                _finish(dispatch.lanes, events, limit)
                return
            try:
                lane, event = events.get(timeout=dispatch.wait(time.monotonic(), limit))
            except queue.Empty:
                if dispatch.backing_off:
                    continue
                raise FeaturizerError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                      f"no answer from {client.target} in {limit} s") from None
            dispatch.handle(lane, event, time.monotonic(), client._error)
    finally:
        for lane in dispatch.lanes:
            lane.cancel()


def _finish(lanes: list[_Lane], events: queue.Queue, limit: Optional[float]) -> None:
    """Half-close every stream and let the server end it (an OK stream, not a CANCELLED one)."""
    for lane in lanes:
        lane.close()
    ending = set(lanes)
    while ending:
        try:
            lane, event = events.get(timeout=limit)
        except queue.Empty:
            return
        if event is None or isinstance(event, grpc.RpcError):
            ending.discard(lane)
    lanes.clear()
