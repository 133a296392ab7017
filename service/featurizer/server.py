"""``FeaturizerServer``: wires settings, device, models, engine and gRPC together, and runs them.

Start-up: bind the port with health NOT_SERVING, load and warm every model, then SERVING.
Shutdown: health NOT_SERVING first, refuse new calls (UNAVAILABLE), let calls in flight finish
within the grace period, then close models and threads.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Optional

import grpc
import torch
from featurizer_client.v1 import featurizer_pb2 as pb
from featurizer_client.v1 import featurizer_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from . import __version__
from .device import Device
from .engine import Engine
from .interceptors import ObservabilityInterceptor, TokenAuthInterceptor
from .metrics import Metrics
from .models import ModelManager
from .registry import Registry
from .servicer import FeaturizerServicer
from .settings import Settings

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Featurizer"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def read_token(path: Path) -> str:
    """The bearer token in ``path``; an empty one would let ``Bearer `` through, so it is refused."""
    token = path.read_text().strip()
    if not token:
        raise ValueError(f"--auth-token-file: {path} is empty; put the bearer token in it")
    return token


class FeaturizerServer:
    """One server process worth of featurizer. ``await start()``; ``port`` is then bound."""

    def __init__(self, settings: Settings, registry_root: Optional[Path] = None) -> None:
        self.settings = settings
        self.registry = Registry(Path(registry_root or settings.registry))
        self.metrics = Metrics()
        self.device = Device.create(settings.device, settings.precision, settings.channels_last, settings.threads)
        self.manager = ModelManager(self.registry, self.device, settings, self.metrics)
        self.engine = Engine(self.manager, settings, self.metrics)
        self.health = health_aio.HealthServicer()
        self.port: int = 0
        self.metrics_port: Optional[int] = None
        self._server: Optional[grpc.aio.Server] = None
        self._metrics_http = None
        self._poller: Optional[asyncio.Task] = None
        self._health_names: set[str] = set()

    async def start(self) -> None:
        """Listen (health NOT_SERVING), load and warm every model, then report SERVING."""
        await self.listen()
        await self.load_models()

    async def listen(self) -> None:
        """Bind and answer RPCs; health says NOT_SERVING until ``load_models`` finishes."""
        s = self.settings
        interceptors = [ObservabilityInterceptor(self.metrics, lambda m: m in self.manager.model_names())]
        if s.auth_token_file is not None:
            interceptors.append(TokenAuthInterceptor(read_token(Path(s.auth_token_file))))
        self.metrics.set_build_info(__version__, torch.__version__, self.device.label)
        if s.metrics_port >= 0:
            self._metrics_http, _ = self.metrics.serve_http(s.metrics_port, s.host)
            self.metrics_port = self._metrics_http.server_port
        self._server = grpc.aio.server(interceptors=interceptors, options=[
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", max(s.max_message_bytes, 256 * 1024 * 1024)),
        ])
        pb_grpc.add_FeaturizerServicer_to_server(FeaturizerServicer(self.engine, self.manager), self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self._server)
        self.port = self._bind(f"{s.host}:{s.port}")
        for name in ("", SERVICE_NAME):
            await self.health.set(name, NOT_SERVING)
        await self._server.start()
        log.info("listening on %s:%d (metrics %s), loading models from %s", s.host, self.port,
                 self.metrics_port, self.registry.root)

    async def load_models(self) -> None:
        await self.reload()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, SERVING)
        if self.settings.poll_interval > 0:
            self._poller = asyncio.get_running_loop().create_task(self._poll(self.settings.poll_interval))

    def _bind(self, address: str) -> int:
        s = self.settings
        if s.tls_cert is None:
            return self._server.add_insecure_port(address)
        client_ca = Path(s.tls_client_ca).read_bytes() if s.tls_client_ca else None
        credentials = grpc.ssl_server_credentials(
            [(Path(s.tls_key).read_bytes(), Path(s.tls_cert).read_bytes())],
            root_certificates=client_ca, require_client_auth=client_ca is not None)
        return self._server.add_secure_port(address, credentials)

    async def reload(self) -> None:
        """One registry sync, then per-model health (SERVING while a version is AVAILABLE)."""
        await self.manager.sync()
        serving = self.manager.serving_models()
        for name in self._health_names | set(self.manager.model_names()):
            await self.health.set(name, SERVING if name in serving else NOT_SERVING)
        self._health_names |= set(self.manager.model_names())

    async def _poll(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reload()
            except Exception:  # never let one bad scan stop hot reload
                log.exception("registry reload failed")

    async def stop(self, grace: Optional[float] = None) -> None:
        grace = self.settings.grace_seconds if grace is None else grace
        await self.health.enter_graceful_shutdown()  # every service NOT_SERVING, now and later
        if self._poller is not None:
            self._poller.cancel()
        if self._server is not None:
            await self._server.stop(grace)
        await self.manager.close()
        self.engine.close()
        self.device.close()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()
