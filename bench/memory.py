"""Memory check: featurizer's RSS after N minutes of 64-caller load vs after the first minute.

A leak (per-request buffers, metrics label growth, queues) shows as RSS that keeps growing after
the warm-up minute; the target is the end within 5% of the first minute.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import systems
from procs import Child
from rss import RssSampler

FIRST_MINUTE_S = 60.0


def memory_check(ctx: systems.Context, minutes: float, concurrency: int = 64) -> dict:
    """Run featurizer under ``concurrency`` callers for ``minutes``; RSS at 1 minute and at the end."""
    seconds = minutes * 60
    running = systems.start("featurizer", ctx, round_index=99)
    try:
        with RssSampler(running.child, interval=2.0) as sampler:
            load = Child("memory-loadgen", [sys.executable, str(Path(__file__).with_name("loadgen.py")),
                                            "--target", running.target, "--payloads", str(ctx.payloads["full"]),
                                            "--concurrency", str(concurrency), "--warmup", "0",
                                            "--seconds", str(seconds)], ctx.log_dir)
            try:
                load.proc.wait(seconds + 120)
            finally:
                load.stop()
        first = sampler.at(min(FIRST_MINUTE_S, seconds / 2))
        last = sampler.samples[-1][1] if sampler.samples else 0
        return {"minutes": minutes, "concurrency": concurrency, "first_minute_rss_bytes": first,
                "end_rss_bytes": last, "peak_rss_bytes": sampler.peak, "growth": (last / first - 1) if first else None,
                "timeline": [(round(t, 1), rss) for t, rss in sampler.samples[:: max(1, len(sampler.samples) // 120)]],
                "load": _last_json(load.log_text())}
    finally:
        running.stop()


def _last_json(text: str) -> dict:
    """The load generator's result line (its log also holds warnings)."""
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"failed": text[-1000:]}
