"""The ceiling of this machine: decode + preprocess + AlexNet ``features`` in-process, no RPC.

Tries every batch size and memory format for ``--seconds`` each and prints one JSON line: every
configuration's images/s, the best one, and the batch-1 latency percentiles (what a lone caller
could get at best). Run as its own process so it competes for the cores exactly like a server.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from payloads import read_payloads  # noqa: E402
from reference_path import forward, load_features, preprocess  # noqa: E402


def measure(model: torch.nn.Module, payloads: list[bytes], batch: int, channels_last: bool, seconds: float) -> dict:
    """Closed loop over batches of ``batch`` images for about ``seconds``."""
    source = itertools.cycle(payloads)
    forward(model, [preprocess(next(source)) for _ in range(batch)], channels_last)  # warm-up
    latencies: list[float] = []
    images = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        t0 = time.perf_counter()
        forward(model, [preprocess(next(source)) for _ in range(batch)], channels_last)
        latencies.append(time.perf_counter() - t0)
        images += batch
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"batch": batch, "channels_last": channels_last, "images_per_s": images / elapsed, "batches": len(latencies),
            "latency_ms": {f"p{q}": float(np.percentile(ms, q)) for q in (50, 95, 99)}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--payloads", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=5.0, help="per configuration")
    parser.add_argument("--batches", default="1,8,32,64")
    parser.add_argument("--formats", default="channels_last,contiguous")
    args = parser.parse_args(argv)
    payloads = read_payloads(args.payloads)
    configs = []
    for fmt in args.formats.split(","):
        channels_last = fmt == "channels_last"
        model = load_features(channels_last)
        configs += [measure(model, payloads, int(b), channels_last, args.seconds) for b in args.batches.split(",")]
    best = max(configs, key=lambda c: c["images_per_s"])
    single = [c for c in configs if c["batch"] == 1]
    lone = min(single, key=lambda c: c["latency_ms"]["p50"]) if single else None
    print(json.dumps({"configs": configs, "best": best, "batch1": lone, "torch_threads": torch.get_num_threads(),
                      "peak_rss_bytes": psutil.Process().memory_info().rss}))


if __name__ == "__main__":
    main()
