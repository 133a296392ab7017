"""The bulk job's window, free of I/O: which item to send next, answers put back in input order.

Shared by the sync and asyncio drivers (``bulk.py``, ``aio_bulk.py``), as ``chunking.py`` is for
unary calls. At most ``max_in_flight`` items are between "taken" and "handed to the caller", so a
slow item holds back at most that many answers, and memory is bounded by the window, not the job.

Why items are retried here and not by gRPC's retry policy: gRPC retries a call only until its
first answer has arrived, and a bulk stream has answered long before a replica goes away. Items
sent on a stream that breaks (UNAVAILABLE, or answered with a retryable per-item error) go back to
the front of the queue and are sent again on a fresh stream, which round_robin places on a
replica that is still up: a lost replica costs retries, never rows.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, Optional, TypeVar, Union

import grpc

from .errors import FeaturizerError
from .sources import Item, Source, Unreadable

T = TypeVar("T")
DEFAULT_BULK_IN_FLIGHT = 64
DEFAULT_STREAMS = 2
MAX_ATTEMPTS = 8
# The item's own fault: another try gives the same answer, so it becomes that item's failure.
ITEM_CODES = frozenset({grpc.StatusCode.INVALID_ARGUMENT})
# The server's or the network's state: the item is sent again, on a new stream.
RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         grpc.StatusCode.CANCELLED})
_POSITION = re.compile(r"^images\[(\d+)\]")
_PREFIX = re.compile(r"^images\[\d+\]:\s*")


class OnError(str, enum.Enum):
    """What a bulk job does with an item the server refuses (a bad file)."""

    RAISE = "raise"      # stop at the first one: ItemFailure names its index and source
    SKIP = "skip"        # leave it out of the results
    COLLECT = "collect"  # hand it back as a ``Failure`` in its place

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Result(Generic[T]):
    """One item's answer: ``value`` is its row (embed) or ``Prediction`` (predict)."""

    index: int
    source: Source
    value: T


@dataclass(frozen=True)
class Failure:
    """One item the server (or the local file system) refused: its gRPC code and message."""

    index: int
    source: Source
    code: grpc.StatusCode
    message: str

    def describe(self) -> str:
        return f"{_where(self.index, self.source)}: {self.message}"


@dataclass(frozen=True)
class Duplicate:
    """An item not sent because an earlier one (``of``) had the same bytes: it gets that answer."""

    index: int
    source: Source
    of: int


Outcome = Union[Result, Failure, Duplicate]


class ItemFailure(FeaturizerError):
    """``on_error="raise"``: the first item refused, with its global index and source."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.code, failure.describe())
        self.failure = failure


def relocate(message: str, index: int) -> str:
    """The server names an image by its place in its own request ("images[0]: ..."): name it by
    its place in the whole job instead."""
    return _POSITION.sub(f"images[{index}]", message, count=1)


def located(error: FeaturizerError, start: int, sources: list[Source]) -> FeaturizerError:
    """``error`` of a call whose images begin at ``start`` of the job, with the bad image named by
    its global index and source; an error about no single image is returned as it is."""
    match = _POSITION.match(error.details)
    if match is None or int(match.group(1)) >= len(sources):
        return error
    local = int(match.group(1))
    rest = error.details[match.end():]
    return FeaturizerError(error.code, _where(start + local, sources[local]) + rest)


def _where(index: int, source: Source) -> str:
    return f"images[{index}]" if isinstance(source, int) else f"images[{index}] ({source})"


def failure_of(item: Item, code: grpc.StatusCode, message: str) -> Failure:
    """The item's failure; the server's "images[0]: " is dropped, ``describe`` names it in full."""
    return Failure(item.index, item.source, code, _PREFIX.sub("", message, count=1))


class Window:
    """Items taken from the input, sent, answered, and handed back in input order.

    ``take`` gives the next item to send (retries first) while the window has room; the driver
    reports each answer with ``answered`` / ``failed`` / ``retry``; ``ready`` yields what can be
    handed back now, in order. ``items`` may yield a ``Duplicate``, handed back without sending.
    """

    def __init__(self, items: Iterator[Union[Item, Duplicate]], max_in_flight: int = DEFAULT_BULK_IN_FLIGHT,
                 max_attempts: int = MAX_ATTEMPTS) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight: expected >= 1, got {max_in_flight}")
        self._items = items
        self._exhausted = False
        self.max_in_flight = max_in_flight
        self.max_attempts = max_attempts
        self._order: deque[int] = deque()          # taken, not yet handed back, in input order
        self._answers: dict[int, Outcome] = {}     # answered, waiting for their turn
        self._retries: list[Item] = []             # to send again, lowest index first
        self.sent = 0                              # messages sent, retries included

    @property
    def finished(self) -> bool:
        return self._exhausted and not self._order and not self._retries

    @property
    def open(self) -> int:
        """Items taken and not yet handed back."""
        return len(self._order)

    def take(self) -> Optional[Item]:
        """The next item to send, or None when the window is full or the input is done."""
        if self._retries:
            return self._retries.pop(0)
        while not self._exhausted and len(self._order) < self.max_in_flight:
            try:
                item = next(self._items)
            except StopIteration:
                self._exhausted = True
                return None
            self._order.append(item.index)
            if isinstance(item, Duplicate):
                self._answers[item.index] = item
                continue
            try:
                item.load()
            except Unreadable as error:
                self._answers[item.index] = Failure(item.index, item.source, error.code, error.message)
                continue
            return item
        return None

    def sent_one(self, item: Item) -> None:
        item.attempts += 1
        self.sent += 1

    def answered(self, item: Item, value: object) -> None:
        item.release()
        self._answers[item.index] = Result(item.index, item.source, value)

    def failed(self, item: Item, code: grpc.StatusCode, message: str) -> None:
        """A per-item error: the item's own fault (a failure) unless the code says retry."""
        if code in RETRY_CODES:
            self.retry(item, FeaturizerError(code, relocate(message, item.index)))
            return
        item.release()
        if code not in ITEM_CODES:  # the model, the token, the server: every item would fail alike
            raise FeaturizerError(code, relocate(message, item.index))
        self._answers[item.index] = failure_of(item, code, message)

    def retry(self, item: Item, error: FeaturizerError) -> None:
        """Send ``item`` again; after ``max_attempts`` the job fails with the last error."""
        if item.attempts >= self.max_attempts:
            raise FeaturizerError(error.code, f"{_where(item.index, item.source)} still unanswered after "
                                              f"{item.attempts} attempts: {error.details}")
        self._retries.append(item)
        self._retries.sort(key=lambda i: i.index)

    def ready(self) -> Iterator[Outcome]:
        while self._order and self._order[0] in self._answers:
            yield self._answers.pop(self._order.popleft())
