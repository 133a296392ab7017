"""The closed loop every load generator shares: N callers, a measurement window, one result shape.

Kept free of grpc, psutil and featurizer's own packages (numpy and the standard library only)
so that ``triton_load.py`` can run it under tritonclient's venv, where featurizer-client's
protobuf would clash, and its rows stay comparable to ``loadgen.py``'s.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter, defaultdict
from typing import Awaitable, Callable, Optional, Protocol

import numpy as np

Send = Callable[[list[bytes]], Awaitable[Optional[str]]]  # a batch of payloads -> None or an error name


class Source(Protocol):
    def take(self, batch: int) -> tuple[list[bytes], Optional[str]]:
        """The next request's payloads, and its kind when latencies are told apart by kind (else None)."""


class Cycle:
    """One caller's own walk through the payloads from its own offset: callers send different
    photos at the same moment."""

    def __init__(self, payloads: list[bytes], offset: int) -> None:
        self.payloads = payloads
        self.i = offset

    def take(self, batch: int) -> tuple[list[bytes], Optional[str]]:
        chunk = [self.payloads[(self.i + k) % len(self.payloads)] for k in range(batch)]
        self.i += batch
        return chunk, None


class Window:
    """The measurement window and what completed inside it.

    Throughput counts the requests that complete inside the window, wherever they started:
    counting only requests that also started inside it would under-count slow requests (a
    64-image batch)."""

    def __init__(self, warmup: float, seconds: float) -> None:
        now = time.perf_counter()
        self.start = now + warmup
        self.end = self.start + seconds
        self.latencies: list[float] = []
        self.by_kind: defaultdict[str, list[float]] = defaultdict(list)
        self.images = 0
        self.errors: Counter[str] = Counter()

    def record(self, started: float, images: int, error: Optional[str], kind: Optional[str] = None) -> None:
        finished = time.perf_counter()
        if not self.start <= finished <= self.end:
            return
        if error is None:
            self.latencies.append(finished - started)
            if kind is not None:
                self.by_kind[kind].append(finished - started)
            self.images += images
        else:
            self.errors[error] += 1


async def caller(send: Send, source: Source, batch: int, window: Window) -> None:
    while time.perf_counter() < window.end:
        chunk, kind = source.take(batch)
        started = time.perf_counter()
        error = await send(chunk)
        window.record(started, batch, error, kind)


async def run_callers(send: Send, payloads: list[bytes], concurrency: int, batch: int, warmup: float,
                      seconds: float, rpc_timeout: float, shared: Optional[Source] = None) -> dict:
    """``concurrency`` callers until the window closes -> the result every bench row holds.

    Each caller cycles through ``payloads`` on its own, unless every caller takes from ``shared``;
    requests whose source names their kind get latency percentiles per kind as well (``by_kind``)."""
    window = Window(warmup, seconds)
    sources = [shared or Cycle(payloads, k) for k in range(concurrency)]
    await asyncio.wait_for(asyncio.gather(*(caller(send, source, batch, window) for source in sources)),
                           timeout=warmup + seconds + rpc_timeout + 5)
    result = {"concurrency": concurrency, "batch": batch, "seconds": seconds,
              "requests": len(window.latencies), "images": window.images, "images_per_s": window.images / seconds,
              "errors": dict(window.errors), "latency_ms": percentiles(window.latencies)}
    if window.by_kind:
        result["by_kind"] = {kind: {"requests": len(values), "latency_ms": percentiles(values)}
                             for kind, values in sorted(window.by_kind.items())}
    return result


def percentiles(latencies: list[float]) -> dict[str, float]:
    """p50/p95/p99 in milliseconds (NaN when nothing completed)."""
    ms = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return {f"p{q}": float(np.percentile(ms, q)) for q in (50, 95, 99)}


def client_cpu_seconds() -> float:
    """This process's user + system CPU seconds: the share of the cores the load itself took."""
    times = os.times()
    return times.user + times.system
