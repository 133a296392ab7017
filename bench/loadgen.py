"""Closed-loop load: N callers, each sending its next request as soon as the last one returns.

Runs as its own process (light: grpc, aiohttp and numpy, never torch) so the server under test
is measured from outside; the loop and its window (``--warmup`` seconds after the start,
``--seconds`` long) are ``closed_loop.py``'s, shared with ``triton_load.py``. Prints one JSON line:
images/s, latency percentiles, errors by code, and this process's CPU seconds (the share of the
2 cores the load itself took).

``--repeat-fraction F`` makes it a response-cache workload (``repeats.py``): with probability F a
request repeats one of the payload files byte for byte, otherwise it is a unique variant of one;
the result then also holds the latency percentiles of repeats and unique requests (``by_kind``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from closed_loop import client_cpu_seconds, run_callers  # noqa: E402
from payloads import read_payloads  # noqa: E402
from repeats import RepeatSource  # noqa: E402

from featurizer_client.v1 import featurizer_pb2 as pb  # noqa: E402
from featurizer_client.v1 import featurizer_pb2_grpc as pb_grpc  # noqa: E402

RPC_TIMEOUT_S = 60.0
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 256 * 1024 * 1024),
                   ("grpc.max_send_message_length", 256 * 1024 * 1024)]


def grpc_sender(target: str, rpc: str, model: str):
    channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
    stub = pb_grpc.FeaturizerStub(channel)

    async def send(batch: list[bytes]) -> str | None:
        images = [pb.Image(encoded=data) for data in batch]
        try:
            if rpc == "predict":
                await stub.Predict(pb.PredictRequest(model=model, images=images), timeout=RPC_TIMEOUT_S)
            else:
                await stub.Embed(pb.EmbedRequest(model=model, images=images), timeout=RPC_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            return error.code().name
        return None

    return send, channel.close


def http_sender(target: str, rpc: str, model: str):
    """LitServe: JSON with base64 images (its default request format)."""
    import aiohttp

    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=RPC_TIMEOUT_S),
                                    connector=aiohttp.TCPConnector(limit=0))
    url = f"http://{target}/predict"

    async def send(batch: list[bytes]) -> str | None:
        body = {"images": [base64.b64encode(data).decode() for data in batch]}
        try:
            async with session.post(url, json=body) as response:
                await response.read()
                return None if response.status == 200 else f"HTTP_{response.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            return type(error).__name__

    return send, session.close


async def run(args: argparse.Namespace) -> dict:
    payloads = read_payloads(args.payloads)
    make = http_sender if args.protocol == "http" else grpc_sender
    send, close = make(args.target, args.rpc, args.model)
    shared = RepeatSource(payloads, args.repeat_fraction, args.seed) if args.repeat_fraction > 0 else None
    try:
        return await run_callers(send, payloads, args.concurrency, args.batch, args.warmup, args.seconds,
                                 RPC_TIMEOUT_S, shared)
    finally:
        await close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True, help="host:port")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument("--rpc", choices=("embed", "predict"), default="embed")
    parser.add_argument("--model", default="alexnet")
    parser.add_argument("--payloads", type=Path, required=True, help="folder of .jpg files")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1, help="images per request")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeat-fraction", type=float, default=0.0,
                        help="share of requests repeating a payload file byte for byte, the rest unique (0 = "
                             "every caller cycles through the files)")
    parser.add_argument("--seed", type=int, default=0, help="of the repeat/unique choices")
    args = parser.parse_args(argv)
    if not 0.0 <= args.repeat_fraction <= 1.0:
        parser.error(f"--repeat-fraction must be in [0, 1], got {args.repeat_fraction}")
    result = asyncio.run(run(args))
    result["client_cpu_s"] = client_cpu_seconds()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
