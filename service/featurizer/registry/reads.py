"""Registry reads with a time bound, on daemon threads, so a hung file system cannot stop serving.

A registry on a network mount can stop answering: a read then blocks in the kernel and no signal
or timeout can interrupt it. Run on the event loop, such a read freezes every RPC; run on a
``ThreadPoolExecutor``, it blocks the loader behind it forever, and interpreter exit too (its
workers are joined at exit, so SIGTERM never ends the process). Here every read gets a thread of
its own, marked daemon so exit does not wait for it, and its caller waits at most ``timeout_s``.
A read that overran is remembered by its label: until it returns, the same read is refused at once
instead of piling up one more stuck thread per poll.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from featurizer.registry.files import RegistryError

T = TypeVar("T")


class RegistryTimeout(RegistryError):
    """A registry read that did not return in time (a hung mount): says nothing about the files."""

    transient = True


class BoundedReads:
    """Runs blocking registry reads for one event loop; each waits at most ``timeout_s`` seconds."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._stuck: dict[str, tuple[threading.Thread, float]] = {}   # label -> (thread, started)

    def stuck(self) -> list[str]:
        """Labels of reads that overran their bound and have still not returned."""
        return [label for label, (thread, _) in self._stuck.items() if thread.is_alive()]

    async def call(self, label: str, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a daemon thread. Raises RegistryTimeout (naming ``label``, which must not
        hold a server path: it reaches clients) past the bound, or while an earlier ``label`` read
        is still stuck; any exception of ``fn`` is re-raised here."""
        earlier = self._stuck.get(label)
        if earlier is not None:
            thread, started = earlier
            if thread.is_alive():
                raise RegistryTimeout(f"{label}: an earlier read, started {time.monotonic() - started:.0f} s ago, "
                                      "has not returned (hung file system?); retried once it does")
            del self._stuck[label]
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        thread = threading.Thread(target=_run, args=(loop, future, fn, args), name=f"registry-read {label}",
                                  daemon=True)
        started = time.monotonic()
        thread.start()
        try:
            return await asyncio.wait_for(future, self.timeout_s)  # cancels ``future`` on timeout: _settle skips it
        except asyncio.TimeoutError:
            self._stuck[label] = (thread, started)
            raise RegistryTimeout(f"{label}: no answer within {self.timeout_s:g} s (hung file system?); "
                                  "retried once the read returns") from None


def _run(loop: asyncio.AbstractEventLoop, future: asyncio.Future, fn: Callable, args: tuple) -> None:
    try:
        result, error = fn(*args), None
    except BaseException as exc:  # handed to the awaiting coroutine, whatever it is
        result, error = None, exc
    try:
        loop.call_soon_threadsafe(_settle, future, result, error)
    except RuntimeError:  # the loop closed while this read was stuck: nobody is waiting any more
        pass


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller gave up (timeout or cancellation) long ago
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
