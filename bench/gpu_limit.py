"""The ceiling of a device, in-process (no RPC), and what decoding costs on CPU vs GPU.

``limit``: decode + preprocess + AlexNet ``features`` (the demo weights), per batch size and
precision, channels_last, the model on ``--device``; images decoded either on CPU threads (as
featurizer's preprocess workers) or by nvJPEG in one batched call (``--decode cuda``).
``decode``: images/s of decode + resize/crop alone, CPU threads vs nvJPEG, per payload folder.
Prints one JSON line. On a CPU machine the CUDA rows are "not run: no CUDA".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from payloads import read_payloads  # noqa: E402
from reference_path import _NORMALIZE, LIMITS, SPEC, load_features, preprocess  # noqa: E402

from featurizer.inference.gpu_decode import resize_on_device  # noqa: E402

NO_CUDA = "not run: no CUDA"
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def gpu_preprocess(payloads: list[bytes], device: torch.device) -> list[torch.Tensor]:
    """nvJPEG in one call, then the preset's resize/crop on the GPU."""
    buffers = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in payloads]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images = decode_jpeg(buffers, mode=ImageReadMode.RGB, device=device)
    return [resize_on_device(image, SPEC, LIMITS, "image") for image in images]


class Source:
    """Batches of preprocessed images, decoded on CPU threads or on the GPU."""

    def __init__(self, payloads: list[bytes], decode: str, device: torch.device, threads: int) -> None:
        self.payloads, self.decode, self.device, self.next = payloads, decode, device, 0
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="preprocess")

    def take(self, count: int) -> list[bytes]:
        picked = [self.payloads[(self.next + k) % len(self.payloads)] for k in range(count)]
        self.next += count
        return picked

    def batch(self, count: int) -> torch.Tensor:
        data = self.take(count)
        if self.decode == "cuda":
            return torch.stack(gpu_preprocess(data, self.device))
        return torch.stack(list(self.pool.map(preprocess, data))).to(self.device, non_blocking=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure(model: torch.nn.Module, source: Source, batch: int, precision: str, seconds: float) -> dict:
    device = source.device

    def step() -> None:
        x = _NORMALIZE(source.batch(batch)).contiguous(memory_format=torch.channels_last)
        dtype = _DTYPES.get(precision)
        if dtype is None:
            torch.flatten(model(x), 1).cpu()
        else:
            with torch.autocast(device_type=device.type, dtype=dtype):
                torch.flatten(model(x), 1).float().cpu()

    step()  # warm-up: cuDNN/oneDNN pick kernels per shape
    latencies: list[float] = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or not latencies:
        t0 = time.perf_counter()
        step()
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"batch": batch, "precision": precision, "decode": source.decode, "channels_last": True,
            "images_per_s": batch * len(latencies) / elapsed,
            "latency_ms": {f"p{q}": float(np.percentile(ms, q)) for q in (50, 99)}}


def decode_rate(payloads: list[bytes], decode: str, device: torch.device, threads: int, seconds: float,
                batch: int = 32) -> dict:
    source = Source(payloads, decode, device, threads)
    source.batch(batch)
    sync(device)
    images, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or images == 0:
        source.batch(batch)
        sync(device)
        images += batch
    return {"decode": decode, "images_per_s": images / (time.perf_counter() - started), "threads": threads}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--payloads", type=Path, required=True, help="folder of .jpg files for the limit")
    parser.add_argument("--decode-payloads", type=Path, nargs="*", default=[], help="folders for the decode rates")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--batches", default="1,32,64,128,256")
    parser.add_argument("--threads", type=int, default=0, help="CPU decode threads (0 = all cores)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    threads = args.threads or (torch.get_num_threads() if not cuda else 16)
    model = load_features(True).to(device)
    payloads = read_payloads(args.payloads)
    configs: list[dict] = []
    for decode in ("cpu", "cuda"):
        source = Source(payloads, decode, device, threads)
        for precision in ("fp32", "fp16"):
            for batch in (int(b) for b in args.batches.split(",")):
                if (decode == "cuda" or precision == "fp16") and not cuda:
                    configs.append({"batch": batch, "precision": precision, "decode": decode, "result": NO_CUDA})
                    continue
                configs.append(measure(model, source, batch, precision, args.seconds))
    ran = [c for c in configs if "images_per_s" in c]
    best = {decode: max((c for c in ran if c["decode"] == decode), key=lambda c: c["images_per_s"], default=None)
            for decode in ("cpu", "cuda")}
    batch1 = {decode: min((c for c in ran if c["decode"] == decode and c["batch"] == 1),
                          key=lambda c: c["latency_ms"]["p50"], default=None) for decode in ("cpu", "cuda")}
    rates = {}
    for folder in args.decode_payloads:
        data = read_payloads(folder)
        rates[folder.name] = {"cpu": decode_rate(data, "cpu", device, threads, args.seconds),
                              "cuda": decode_rate(data, "cuda", device, threads, args.seconds) if cuda else NO_CUDA}
    peak = torch.cuda.max_memory_allocated(device) if cuda else NO_CUDA
    print(json.dumps({"device": str(device), "configs": configs, "best": best, "batch1": batch1,
                      "decode_rates": rates, "gpu_memory_peak_bytes": peak}))


if __name__ == "__main__":
    main()
