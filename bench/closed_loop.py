"""The closed loop every load generator shares: N callers, a measurement window, one result shape.

Kept free of grpc, psutil and featurizer's own packages (numpy and the standard library only)
so that ``triton_load.py`` can run it under tritonclient's venv, where featurizer-client's
protobuf would clash, and its rows stay comparable to ``loadgen.py``'s.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from typing import Awaitable, Callable, Optional

import numpy as np

Send = Callable[[list[bytes]], Awaitable[Optional[str]]]  # a batch of payloads -> None or an error name


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
        self.images = 0
        self.errors: Counter[str] = Counter()

    def record(self, started: float, images: int, error: Optional[str]) -> None:
        finished = time.perf_counter()
        if not self.start <= finished <= self.end:
            return
        if error is None:
            self.latencies.append(finished - started)
            self.images += images
        else:
            self.errors[error] += 1


async def caller(send: Send, payloads: list[bytes], offset: int, batch: int, window: Window) -> None:
    i = offset
    while time.perf_counter() < window.end:
        chunk = [payloads[(i + k) % len(payloads)] for k in range(batch)]
        i += batch
        started = time.perf_counter()
        error = await send(chunk)
        window.record(started, batch, error)


async def run_callers(send: Send, payloads: list[bytes], concurrency: int, batch: int, warmup: float,
                      seconds: float, rpc_timeout: float) -> dict:
    """``concurrency`` callers until the window closes -> the result every bench row holds."""
    window = Window(warmup, seconds)
    await asyncio.wait_for(
        asyncio.gather(*(caller(send, payloads, k, batch, window) for k in range(concurrency))),
        timeout=warmup + seconds + rpc_timeout + 5)
    ms = np.array(window.latencies) * 1000 if window.latencies else np.array([float("nan")])
    return {"concurrency": concurrency, "batch": batch, "seconds": seconds,
            "requests": len(window.latencies), "images": window.images, "images_per_s": window.images / seconds,
            "errors": dict(window.errors), "latency_ms": {f"p{q}": float(np.percentile(ms, q)) for q in (50, 95, 99)}}


def client_cpu_seconds() -> float:
    """This process's user + system CPU seconds: the share of the cores the load itself took."""
    times = os.times()
    return times.user + times.system
