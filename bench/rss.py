"""Peak resident memory of a running system, sampled on a background thread."""

from __future__ import annotations

import threading

from procs import Child


class RssSampler:
    """Samples ``child``'s process-tree RSS every ``interval`` seconds until stopped."""

    def __init__(self, child: Child, interval: float = 0.25) -> None:
        self.child = child
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{child.name}", daemon=True)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        import time

        started = time.monotonic()
        while not self._stop.is_set():
            self.samples.append((time.monotonic() - started, self.child.rss_bytes()))
            self._stop.wait(self.interval)

    @property
    def peak(self) -> int:
        return max((rss for _, rss in self.samples), default=0)

    def at(self, seconds: float) -> int:
        """The last sample taken at or before ``seconds`` after the start."""
        before = [rss for t, rss in self.samples if t <= seconds]
        return before[-1] if before else 0
