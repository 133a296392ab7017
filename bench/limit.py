"""The ceiling of this machine: decode + preprocess + AlexNet ``features`` in-process, no RPC.

Searches batch size x memory format x pipelining (preprocess the next batch on 2 threads while
the current one runs, as a server can) for ``--seconds`` each and prints one JSON line: every
configuration's images/s, the best one, and the best batch-1 latency without pipelining (what a
lone caller could get at best). The model runs on a dedicated thread, as in featurizer.

``--decode`` picks the preprocessing: ``exact`` (featurizer's exact path, bit-identical to torchvision's
preset) or ``fast`` (the same with featurizer's reduced-scale JPEG decode, ``input.decode: fast``).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from payloads import read_payloads  # noqa: E402
from reference_path import forward, load_features, preprocess  # noqa: E402

from featurizer.registry.manifest import DecodeMode  # noqa: E402


def measure(model: torch.nn.Module, payloads: list[bytes], batch: int, channels_last: bool, pipelined: bool,
            seconds: float, decode: DecodeMode = DecodeMode.EXACT) -> dict:
    """Closed loop over batches of ``batch`` images for about ``seconds`` (model on the calling thread).

    Images are preprocessed on 2 helper threads, as featurizer's preprocess workers do. Without
    pipelining each batch is preprocessed, then run (latency = the whole path); with it, the next
    batch is preprocessed while this one runs (latency then excludes the overlapped preprocessing).
    """
    source = itertools.cycle(payloads)
    prep = functools.partial(preprocess, decode=decode)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="preprocess") as pool:
        def prepare():
            return pool.map(prep, [next(source) for _ in range(batch)])

        forward(model, list(prepare()), channels_last)  # warm-up (oneDNN picks kernels per shape)
        latencies: list[float] = []
        images = 0
        started = time.perf_counter()
        ready = prepare() if pipelined else None
        while time.perf_counter() - started < seconds:
            t0 = time.perf_counter()
            current = list(ready) if ready is not None else list(prepare())
            if pipelined:
                ready = prepare()  # decodes during this forward pass
            forward(model, current, channels_last)
            latencies.append(time.perf_counter() - t0)
            images += batch
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"batch": batch, "channels_last": channels_last, "pipelined": pipelined, "images_per_s": images / elapsed,
            "batches": len(latencies), "latency_ms": {f"p{q}": float(np.percentile(ms, q)) for q in (50, 95, 99)}}


def search(payloads: list[bytes], batches: list[int], formats: list[str], pipelining: list[bool],
           seconds: float, decode: DecodeMode = DecodeMode.EXACT) -> list[dict]:
    """Every configuration, formats interleaved per batch size so drift does not favour one."""
    models = {fmt: load_features(fmt == "channels_last") for fmt in formats}
    return [measure(models[fmt], payloads, b, fmt == "channels_last", p, seconds, decode)
            for b in batches for p in pipelining for fmt in formats]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--payloads", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=3.0, help="per configuration")
    parser.add_argument("--batches", default="1,8,32,64")
    parser.add_argument("--formats", default="channels_last,contiguous")
    parser.add_argument("--pipelining", default="off,on")
    parser.add_argument("--decode", type=DecodeMode, choices=list(DecodeMode), default=DecodeMode.EXACT,
                        help="exact: featurizer's exact path; fast: its reduced-scale JPEG decode")
    args = parser.parse_args(argv)
    payloads = read_payloads(args.payloads)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="infer") as inference:
        configs = inference.submit(search, payloads, [int(b) for b in args.batches.split(",")],
                                   args.formats.split(","), [p == "on" for p in args.pipelining.split(",")],
                                   args.seconds, args.decode).result()
    best = max(configs, key=lambda c: c["images_per_s"])
    single = [c for c in configs if c["batch"] == 1 and not c["pipelined"]]
    lone = min(single, key=lambda c: c["latency_ms"]["p50"]) if single else None
    print(json.dumps({"decode": args.decode.value, "configs": configs, "best": best, "batch1": lone, "torch_threads": torch.get_num_threads(),
                      "peak_rss_bytes": psutil.Process().memory_info().rss}))


if __name__ == "__main__":
    main()
