"""``FeaturizerServer``: wires settings, device, models, engine and gRPC together, and runs them.

Start-up: bind the port with health NOT_SERVING, load and warm every model, then SERVING.
Shutdown: health NOT_SERVING first, refuse new calls (UNAVAILABLE), let calls in flight finish
within the grace period, then close models and threads.

Ports are exclusive: gRPC would otherwise set SO_REUSEPORT, and a second server on a busy port
would start silently and take a share of the new connections. A port that cannot be bound is
``CannotListen``, naming the setting and port (``featurizer serve`` prints it with its flag, in one line, and exits 1).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from wsgiref.simple_server import WSGIServer
from pathlib import Path
from typing import Optional

import grpc
import torch
from featurizer_client.v1 import featurizer_pb2 as pb
from featurizer_client.v1 import featurizer_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from featurizer import __version__
from featurizer.inference.device import Device
from featurizer.inference.engine import Engine
from featurizer.inference.errors import FeaturizerError
from featurizer.rpc.auth import TokenAuthInterceptor
from featurizer.rpc.error_mapping import ErrorMappingInterceptor
from featurizer.rpc.observability import ObservabilityInterceptor
from featurizer.rpc.observation import CallRecorder
from featurizer.rpc.request_decoding import DecodingInterceptor
from featurizer.metrics import Metrics
from featurizer.inference.models import ModelManager
from featurizer.rpc.oip import grpc_service as oip_grpc, health_ready
from featurizer.rpc.oip.http import HttpServer
from featurizer.registry.registry import Registry
from featurizer.rpc.servicer import FeaturizerServicer
from featurizer.settings import InvalidSetting, Settings

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Featurizer"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class CannotListen(InvalidSetting):
    """A port this server was told to listen on cannot be bound; names the setting and the port."""

    def __init__(self, setting: str, address: str, why: str = "") -> None:
        super().__init__(setting, f"cannot listen on {address}{f' ({why})' if why else ''}; "
                                  "is another server running there?")


def ensure_free(host: str, port: int, setting: str) -> None:
    """Raise ``CannotListen`` if ``host:port`` cannot be bound now. Checked before grpc tries:
    grpc's own failure is a bare RuntimeError plus a C-level log line, and names no cause."""
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return  # grpc reports what it makes of the address
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc: TIME_WAIT is no conflict
            try:
                probe.bind(address)
            except OSError as error:
                raise CannotListen(setting, f"{host}:{port}", error.strerror or "") from None


def read_token(path: Path) -> str:
    """The bearer token in ``path``; an empty one would let ``Bearer `` through, so it is refused."""
    token = path.read_text().strip()
    if not token:
        raise InvalidSetting("auth_token_file", f"{path} is empty; put the bearer token in it")
    return token


class FeaturizerServer:
    """One server process worth of featurizer. ``await start()``; ``port`` is then bound."""

    def __init__(self, settings: Settings, registry_root: Optional[Path] = None) -> None:
        self.settings = settings
        root = registry_root or settings.registry
        if root is None:
            raise ValueError("no model registry directory given")
        self.registry = Registry(Path(root))
        self.metrics = Metrics()
        self.device = Device.create(settings.device, settings.precision, settings.channels_last, settings.threads)
        self.manager = ModelManager(self.registry, self.device, settings, self.metrics)
        self.engine = Engine(self.manager, settings, self.metrics)
        self.recorder = CallRecorder(self.metrics, self._model_label)  # every protocol's calls, counted alike
        self.health = health_aio.HealthServicer()
        self.port: int = 0
        self.metrics_port: Optional[int] = None
        self._server: Optional[grpc.aio.Server] = None
        self._metrics_http: Optional[WSGIServer] = None
        self.http_port: Optional[int] = None  # Open Inference Protocol over HTTP (--http-port)
        self._http: Optional[HttpServer] = None
        self._poller: Optional[asyncio.Task] = None
        self._health_names: set[str] = set()

    async def start(self) -> None:
        """Listen (health NOT_SERVING), load and warm every model, then report SERVING."""
        await self.listen()
        await self.load_models()

    async def listen(self) -> None:
        """Bind and answer RPCs; health says NOT_SERVING until ``load_models`` finishes."""
        s = self.settings
        # One concern each, outermost first: the token check (before anything is parsed; it counts
        # and logs what it denies), request ids/metrics/access log, errors -> statuses, and the
        # safe request deserializer. The same for featurizer.v1 and inference.GRPCInferenceService.
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if s.auth_token_file is not None:
            interceptors.append(TokenAuthInterceptor(read_token(Path(s.auth_token_file)), self.recorder))
        interceptors += [ObservabilityInterceptor(self.recorder), ErrorMappingInterceptor(), DecodingInterceptor()]
        self.metrics.set_build_info(__version__, torch.__version__, self.device.label)
        ensure_free(s.host, s.port, "port")
        if s.metrics_port >= 0:
            try:
                metrics_http, _ = self.metrics.serve_http(s.metrics_port, s.host)
            except OSError as error:
                raise CannotListen("metrics_port", f"{s.host}:{s.metrics_port}", error.strerror or str(error)) from None
            self._metrics_http, self.metrics_port = metrics_http, metrics_http.server_port
        self._server = server = grpc.aio.server(interceptors=interceptors, options=[
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", max(s.max_message_bytes, 256 * 1024 * 1024)),
            ("grpc.so_reuseport", 0),  # a busy port is an error, not a port shared with a stranger
        ])
        pb_grpc.add_FeaturizerServicer_to_server(FeaturizerServicer(self.engine, self.manager), self._server)
        oip_service = oip_grpc.add_to_server(self._server, self.engine, self.manager,
                                             health_ready(self.health, SERVICE_NAME))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, oip_service, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME),
            self._server)
        try:
            self.port = self._bind(server, f"{s.host}:{s.port}")
        except CannotListen:
            self._close_metrics_http()
            raise
        for name in ("", SERVICE_NAME):
            await self.health.set(name, NOT_SERVING)
        await server.start()
        if s.http_port >= 0:
            await self._start_http()
        log.info("listening on %s:%d (metrics %s), loading models from %s", s.host, self.port,
                 self.metrics_port, self.registry.root)

    async def _start_http(self) -> None:
        """The Open Inference Protocol over HTTP on --http-port: same engine, token and TLS as gRPC."""
        s = self.settings
        token = read_token(Path(s.auth_token_file)) if s.auth_token_file is not None else None
        self._http = HttpServer(self.engine, self.manager, health_ready(self.health, SERVICE_NAME), s, token,
                                self.recorder)
        try:
            self.http_port = await self._http.start(s.host, s.http_port)
        except OSError as error:
            raise CannotListen("http_port", f"{s.host}:{s.http_port}", error.strerror or str(error)) from None

    async def load_models(self) -> None:
        await self.reload()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, SERVING)
        if self.settings.poll_interval > 0:
            self._poller = asyncio.get_running_loop().create_task(self._poll(self.settings.poll_interval))

    def _bind(self, server: grpc.aio.Server, address: str) -> int:
        s = self.settings
        try:
            if s.tls_cert is None or s.tls_key is None:  # settings hold both or neither
                port = server.add_insecure_port(address)
            else:
                client_ca = Path(s.tls_client_ca).read_bytes() if s.tls_client_ca else None
                credentials = grpc.ssl_server_credentials(
                    [(Path(s.tls_key).read_bytes(), Path(s.tls_cert).read_bytes())],
                    root_certificates=client_ca, require_client_auth=client_ca is not None)
                port = server.add_secure_port(address, credentials)
        except RuntimeError:  # grpc's "Failed to bind to address ...", which names no cause
            port = 0
        if port == 0:  # taken since ensure_free, or an address grpc cannot use
            raise CannotListen("port", address)
        return port

    def _model_label(self, model: str) -> str:
        """The ``model`` label of a call: what an alias resolves to, "" for none, else "unknown"."""
        if not model:
            return ""
        try:
            name, _ = self.manager.resolve_alias(model)
        except FeaturizerError:  # an alias cycle
            return "unknown"
        return name if name in self.manager.model_names() else "unknown"

    async def reload(self) -> None:
        """One registry sync, then per-model health (SERVING while a version is AVAILABLE)."""
        await self.manager.sync()
        for name in self.manager.model_names():  # series at 0 from the first scan: alerts see 0 -> 1
            self.metrics.model_seen(name)
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
        http_stopped = asyncio.ensure_future(self._http.stop()) if self._http is not None else None
        if self._server is not None:
            await self._server.stop(grace)
        if http_stopped is not None:  # stopped beside gRPC: requests in flight finish within the same grace
            await http_stopped
        await self.manager.close()
        self.engine.close()
        self.device.close()
        self._close_metrics_http()

    def _close_metrics_http(self) -> None:
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
            self._metrics_http = None

    async def wait_for_termination(self) -> None:
        if self._server is None:
            raise RuntimeError("the server is not listening; await listen() first")
        await self._server.wait_for_termination()
