"""A response-cache workload: a share of the requests repeat hot payloads byte for byte, the rest
are unique.

A unique request is one of the same JPEGs with a COM (comment) segment inserted right after SOI
holding a counter: its bytes, and any digest of them, differ from every other request's, while its
pixels and decoding cost are the hot file's. Each request is told apart as a ``repeat`` (its exact
bytes were already sent earlier in the run, warm-up included) or ``unique`` (never sent before:
every variant, and a hot file's first send), so a load generator can report the latency of each
kind. Standard library only: it runs inside the load generator.
"""

from __future__ import annotations

import random
from typing import Optional

REPEAT = "repeat"
UNIQUE = "unique"
SOI = b"\xff\xd8"
COM = b"\xff\xfe"


def with_comment(jpeg: bytes, text: bytes) -> bytes:
    """``jpeg`` with a COM segment holding ``text`` right after its SOI marker."""
    if not jpeg.startswith(SOI):
        raise ValueError("not a JPEG: it does not start with SOI (FF D8)")
    if len(text) > 65533:
        raise ValueError(f"a COM segment holds at most 65533 bytes, not {len(text)}")
    return SOI + COM + (len(text) + 2).to_bytes(2, "big") + text + jpeg[len(SOI):]


class RepeatSource:
    """One source shared by every caller of a load, so "sent before" spans the whole run.

    With probability ``fraction`` (a seeded RNG: the same sequence of choices every run) an image
    is one of the hot ``payloads`` as they are; otherwise the next unique variant."""

    def __init__(self, payloads: list[bytes], fraction: float, seed: int = 0) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"repeat fraction must be in [0, 1], got {fraction}")
        self.payloads = payloads
        self.fraction = fraction
        self._rng = random.Random(seed)
        self._sent: set[int] = set()  # hot payloads already sent (variants are never sent twice)
        self._unique = 0

    def take(self, batch: int) -> tuple[list[bytes], Optional[str]]:
        """The next request's images and its kind: a repeat only if every image was sent before."""
        chunk: list[bytes] = []
        repeat = True
        for _ in range(batch):
            if self._rng.random() < self.fraction:
                index = self._rng.randrange(len(self.payloads))
                repeat = repeat and index in self._sent
                self._sent.add(index)
                chunk.append(self.payloads[index])
            else:
                self._unique += 1
                base = self.payloads[self._unique % len(self.payloads)]
                chunk.append(with_comment(base, b"featurizer bench unique request %d" % self._unique))
                repeat = False
        return chunk, REPEAT if repeat else UNIQUE
