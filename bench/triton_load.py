"""Closed-loop load through tritonclient: featurizer's Open Inference Protocol (v2) rows.

Runs under tritonclient's own venv (``.venv-triton``, built by ``tests/support/triton.py``:
tritonclient pins protobuf < 7), never under featurizer's, with the same loop, window and JSON
line as ``loadgen.py`` (``closed_loop.py``), so a v2 row and a featurizer.v1 row of one round
compare like for like. Each request is what an ML team's Triton client sends: the encoded images
as one ``BYTES`` input ``images`` of shape ``[N]``, asking for ``embeddings`` (binary over HTTP,
tritonclient's default; ``raw_output_contents`` over gRPC).

    python triton_load.py --url 127.0.0.1:PORT --protocol grpc|http --payloads DIR --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from enum import StrEnum
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from closed_loop import client_cpu_seconds, run_callers  # noqa: E402
from payloads import read_payloads  # noqa: E402

RPC_TIMEOUT_S = 60.0


class Transport(StrEnum):
    """tritonclient's two clients."""

    GRPC = "grpc"
    HTTP = "http"


def sender(transport: Transport, url: str, model: str, output: str):
    """(send, close) over tritonclient's asyncio client for ``transport``."""
    from tritonclient.utils import InferenceServerException

    failures: tuple[type[BaseException], ...] = (asyncio.TimeoutError,)
    if transport is Transport.GRPC:  # grpc.aio errors arrive as InferenceServerException
        import tritonclient.grpc.aio as tc
        client = tc.InferenceServerClient(url)
        outputs = [tc.InferRequestedOutput(output)]
    else:
        import aiohttp
        import tritonclient.http.aio as tc
        failures += (aiohttp.ClientError,)
        client = tc.InferenceServerClient(url, conn_limit=0, conn_timeout=RPC_TIMEOUT_S)
        outputs = [tc.InferRequestedOutput(output, binary_data=True)]

    async def send(batch: list[bytes]) -> str | None:
        images = tc.InferInput("images", [len(batch)], "BYTES")
        images.set_data_from_numpy(np.array(batch, dtype=np.object_))
        try:
            if transport is Transport.GRPC:  # a client deadline; HTTP's is conn_timeout
                result = await client.infer(model, [images], outputs=outputs, client_timeout=RPC_TIMEOUT_S)
            else:
                result = await client.infer(model, [images], outputs=outputs)
        except InferenceServerException as error:
            return str(error.status() or "InferenceServerException")
        except failures as error:
            return type(error).__name__
        rows = result.as_numpy(output)
        return None if rows is not None and len(rows) == len(batch) else "WRONG_ROW_COUNT"

    return send, client.close


async def run(args: argparse.Namespace) -> dict:
    payloads = read_payloads(args.payloads)
    send, close = sender(Transport(args.protocol), args.url, args.model, args.output)
    try:
        return await run_callers(send, payloads, args.concurrency, args.batch, args.warmup, args.seconds,
                                 RPC_TIMEOUT_S)
    finally:
        await close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="host:port of the gRPC port (grpc) or the --http-port (http)")
    parser.add_argument("--protocol", choices=list(Transport), default=Transport.GRPC)
    parser.add_argument("--model", default="alexnet")
    parser.add_argument("--output", default="embeddings", help="the output to ask for")
    parser.add_argument("--payloads", type=Path, required=True, help="folder of .jpg files")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1, help="images per request")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    result["client_cpu_s"] = client_cpu_seconds()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
