"""Real servers for tests: in-process (own event loop thread) or as a ``featurizer serve`` process.

Both bind 127.0.0.1 on an ephemeral port and are called over real gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Optional

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from featurizer.rpc.server import FeaturizerServer
from featurizer.settings import Settings

# "(metrics on :PORT)" or "(metrics off)": group 3 is the port, or "off".
LISTENING = re.compile(r"featurizer listening on ([\d.]+):(\d+) \(metrics (?:on :)?(\S+?)\)")


DEVICE_SETTINGS = ("device", "precision", "decode_device")


def device_overrides() -> dict[str, str]:
    """Where the servers tests start run: ``FEATURIZER_TEST_DEVICE`` (and ``_PRECISION``,
    ``_DECODE_DEVICE``) when set, so bench/gpu_check.sh runs the same tests on a GPU; unset, the
    settings' defaults. A flag or override a test passes itself still wins."""
    return {name: os.environ[f"FEATURIZER_TEST_{name.upper()}"] for name in DEVICE_SETTINGS
            if os.environ.get(f"FEATURIZER_TEST_{name.upper()}")}


class ServerThread:
    """A FeaturizerServer running on its own asyncio loop in a daemon thread."""

    def __init__(self, registry: Path, *, load: bool = True, **overrides: Any) -> None:
        overrides = {**device_overrides(), **overrides}  # a test's own device= wins
        settings = Settings(registry=Path(registry), host="127.0.0.1", port=0, metrics_port=overrides.pop("metrics_port", -1),
                            poll_interval=overrides.pop("poll_interval", 0), log_format="text", **overrides)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-server", daemon=True)
        self._thread.start()
        self.server: FeaturizerServer = self.call(self._make(settings))
        self.call(self.server.listen())
        if load:
            self.call(self.server.load_models())

    @staticmethod
    async def _make(settings: Settings) -> FeaturizerServer:
        return FeaturizerServer(settings)

    def call(self, coro, timeout: float = 300) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro) -> Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    @property
    def metrics(self):
        return self.server.metrics.registry

    def sample(self, name: str, **labels: str) -> float:
        """Sum of the samples called ``name`` whose labels include ``labels`` (as PromQL's
        ``sum(name{labels})``, and as ``ServerProcess.scrape``): a label not named is summed over."""
        return float(sum(s.value for family in self.metrics.collect() for s in family.samples
                         if s.name == name and labels.items() <= s.labels.items()))

    def reload(self) -> None:
        self.call(self.server.reload())

    def stop(self, grace: float = 5.0) -> None:
        try:
            self.call(self.server.stop(grace))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)


@contextlib.contextmanager
def running_server(registry: Path, **overrides: Any) -> Iterator[ServerThread]:
    handle = ServerThread(registry, **overrides)
    try:
        yield handle
    finally:
        handle.stop()


class ServerProcess:
    """``python -m featurizer serve`` as a child process (for signals and multi-replica tests)."""

    def __init__(self, registry: Optional[Path], *flags: str, env: Optional[dict] = None, port: int = 0) -> None:
        args = [sys.executable, "-m", "featurizer", "serve", "--host", "127.0.0.1", "--port", str(port),
                "--metrics-port", "0", "--log-format", "json", *flags]
        if registry is not None:
            args += ["--registry", str(registry)]
        device_env = {f"FEATURIZER_{name.upper()}": value for name, value in device_overrides().items()}
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **device_env, **(env or {})})
        # Drain stderr all along: an unread pipe fills up (64 KiB of access logs) and blocks the server.
        self._stderr: list[str] = []
        self._drain = threading.Thread(target=self._stderr.extend, args=(self.proc.stderr,), daemon=True)
        self._drain.start()
        self.port, self.metrics_port = self._wait_listening()
        self.target = f"127.0.0.1:{self.port}"

    def _wait_listening(self) -> tuple[int, int]:
        for line in self.proc.stdout:  # blocks until the server prints its address (or exits)
            match = LISTENING.search(line)
            if match:
                return int(match.group(2)), int(match.group(3)) if match.group(3).isdigit() else -1
        code = self.proc.wait()
        raise RuntimeError(f"featurizer serve exited with {code} before listening:\n{self.stderr_lines()[-30:]}")

    def stderr_lines(self) -> list[str]:
        """Everything the server wrote to stderr (complete once the process has exited)."""
        if self.proc.poll() is not None:
            self._drain.join(10)
        return [line.rstrip("\n") for line in self._stderr]

    def scrape(self, name: str, **labels: str) -> float:
        """Sum of the samples called ``name`` whose labels include ``labels``, from its /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
                   if s.name == name and labels.items() <= s.labels.items())

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._drain.join(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()


def health_status(target: str, service: str = "", timeout: float = 5) -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout).status


def free_port() -> int:
    """A TCP port nobody listens on right now (for a server that must come back on the same port)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
