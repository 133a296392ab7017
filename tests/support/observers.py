"""Batch observers for tests: wrap a model's real observer and signal a condition (no sleeps)."""

from __future__ import annotations

import threading


class DepthWatcher:
    """Forwards a batcher's observer calls and signals when the queue reaches ``depth``."""

    def __init__(self, inner, depth: int) -> None:
        self.inner, self.depth, self.reached = inner, depth, threading.Event()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def on_queue_depth(self, depth: int) -> None:
        self.inner.on_queue_depth(depth)
        if depth >= self.depth:
            self.reached.set()
