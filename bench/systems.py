"""How to start each system under test as a subprocess, and when it is ready.

A system is ready when a real request of each kind it will serve has succeeded (models loaded
and warmed up), not merely when its port is open.
"""

from __future__ import annotations

import base64
import json
import socket
import sys
import time
import urllib.request
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Optional

import grpc

from featurizer_client.v1 import featurizer_pb2 as pb
from featurizer_client.v1 import featurizer_pb2_grpc as pb_grpc
from procs import Child, ChildFailed

BENCH = Path(__file__).resolve().parent
LISTENING = r"listening on 127\.0\.0\.1:(\d+)"
# featurizer's own lines: with --http-port the v2 HTTP line ("v2 HTTP listening on ...") comes first
FEATURIZER_GRPC = r"featurizer listening on 127\.0\.0\.1:(\d+)"
FEATURIZER_HTTP = r"v2 HTTP listening on 127\.0\.0\.1:(\d+)"
START_TIMEOUT_S = 180.0
# v2-grpc and v2-http: the same featurizer server, loaded through tritonclient (Open Inference Protocol);
# featurizer-cache: featurizer with its response cache on, for the repeat workload only
SERVERS = ("featurizer", "featurizer-cache", "v2-grpc", "v2-http", "naive", "litserve", "pytriton", "echo")
V2_SYSTEMS = ("v2-grpc", "v2-http")
CACHED = "featurizer-cache"
FEATURIZER_SYSTEMS = ("featurizer", CACHED, *V2_SYSTEMS)
CACHE_BYTES = 256 * 1024 * 1024  # featurizer-cache's --cache-bytes: far more than a run's unique rows


class Protocol(StrEnum):
    """What a load generator speaks to a system: which generator runs, and how."""

    GRPC = "grpc"        # featurizer.v1 (featurizer, naive, echo): loadgen.py
    HTTP = "http"        # LitServe's JSON: loadgen.py
    V2_GRPC = "v2-grpc"  # Open Inference Protocol over gRPC: triton_load.py under tritonclient's venv
    V2_HTTP = "v2-http"  # Open Inference Protocol over HTTP: triton_load.py under tritonclient's venv


@dataclass(frozen=True)
class Context:
    registry: Path
    payloads: dict[str, Path]   # "full", "phone" and "small" folders
    log_dir: Path
    max_batch_size: int = 64     # featurizer's defaults, given to the peers' batchers too
    max_delay_ms: float = 2.0


@dataclass
class Running:
    name: str
    child: Child
    target: str  # host:port that the load generator calls
    protocol: Protocol
    v1_target: Optional[str] = None  # featurizer's gRPC port, where warm-up sends featurizer.v1 calls

    def stop(self) -> None:
        self.child.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(name: str, ctx: Context, round_index: int) -> Running:
    """Start ``name`` and wait until it has answered a real request."""
    py = sys.executable
    log_name = f"{name}-r{round_index}"
    if name in FEATURIZER_SYSTEMS:  # as shipped: default settings, only addresses (and the cache) are chosen
        http = ["--http-port", "0"] if name == "v2-http" else []
        # The cache is off by default; said explicitly, as a FEATURIZER_CACHE_BYTES in the environment
        # would turn every cycling load into cache hits.
        cache = ["--cache-bytes", str(CACHE_BYTES if name == CACHED else 0)]
        child = Child(log_name, [py, "-m", "featurizer", "serve", "--registry", str(ctx.registry),
                                 "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0", *http, *cache],
                      ctx.log_dir)
        grpc_target = _grpc_target(child, FEATURIZER_GRPC)
        target = _grpc_target(child, FEATURIZER_HTTP) if name == "v2-http" else grpc_target
        protocol = {"v2-grpc": Protocol.V2_GRPC, "v2-http": Protocol.V2_HTTP}.get(name, Protocol.GRPC)
        running = Running(name, child, target, protocol, v1_target=grpc_target)
    elif name in ("naive", "echo"):
        child = Child(log_name, [py, str(BENCH / f"{name}_server.py"), "--port", "0"], ctx.log_dir)
        running = Running(name, child, _grpc_target(child), Protocol.GRPC)
    elif name == "litserve":
        port = free_port()
        child = Child(log_name, [py, str(BENCH / "peers" / "litserve_server.py"), "--port", str(port),
                                 "--max-batch-size", str(ctx.max_batch_size), "--max-delay-ms", str(ctx.max_delay_ms)],
                      ctx.log_dir)
        running = Running(name, child, f"127.0.0.1:{port}", Protocol.HTTP)
    else:
        raise ValueError(f"unknown system {name!r}; expected one of {', '.join(SERVERS)}")
    try:
        _warm_up(running, ctx)
    except BaseException:
        running.stop()
        raise
    return running


def _grpc_target(child: Child, line: str = LISTENING) -> str:
    return f"127.0.0.1:{child.wait_for_line(line, START_TIMEOUT_S).group(1)}"


def _warm_up(running: Running, ctx: Context) -> None:
    """Retry one real request until it succeeds or the start deadline passes."""
    full = sorted(ctx.payloads["full"].glob("*.jpg"))[0].read_bytes()
    small = sorted(ctx.payloads["small"].glob("*.jpg"))[0].read_bytes()
    deadline = time.monotonic() + START_TIMEOUT_S
    last_error = ""
    while time.monotonic() < deadline:
        if running.child.proc.poll() is not None:
            raise ChildFailed(f"{running.name} exited with {running.child.proc.returncode}:\n"
                              f"{running.child.log_text()[-2000:]}")
        try:
            if running.protocol is Protocol.HTTP:
                _http_embed(running.target, full)
            elif running.name == "echo":
                _grpc_call(running.target, "predict", small)
            elif running.v1_target is not None:  # featurizer, whichever protocol the load speaks
                _grpc_call(running.v1_target, "embed", full)
                _grpc_call(running.v1_target, "predict", small)
                if running.protocol is Protocol.V2_HTTP:
                    _v2_http_ready(running.target)
            else:
                _grpc_call(running.target, "embed", full)
            return
        except (grpc.RpcError, OSError) as error:
            last_error = f"{type(error).__name__}: {error}"
            time.sleep(0.5)  # the child is still loading: poll an external process with a deadline
    raise ChildFailed(f"{running.name} not ready after {START_TIMEOUT_S:.0f}s: {last_error}")


def _grpc_call(target: str, rpc: str, data: bytes) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.FeaturizerStub(channel)
        images = [pb.Image(encoded=data)]
        if rpc == "predict":
            stub.Predict(pb.PredictRequest(model="largenet", images=images), timeout=60)
        else:
            stub.Embed(pb.EmbedRequest(model="alexnet", images=images), timeout=60)


def _v2_http_ready(target: str) -> None:
    """The Open Inference Protocol's readiness: 200 once every model is loaded (else HTTPError, an OSError)."""
    with urllib.request.urlopen(f"http://{target}/v2/health/ready", timeout=60) as response:
        response.read()


def _http_embed(target: str, data: bytes) -> None:
    body = json.dumps({"images": [base64.b64encode(data).decode()]}).encode()
    request = urllib.request.Request(f"http://{target}/predict", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
