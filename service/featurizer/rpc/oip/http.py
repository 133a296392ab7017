"""The Open Inference Protocol over HTTP/REST (aiohttp), in the gRPC server's process and event loop.

JSON tensors as the protocol defines them, and Triton's binary tensor data extension (the JSON
header is the first ``Inference-Header-Content-Length`` bytes of the body; each input with a
``binary_data_size`` parameter takes that many bytes of the rest, in order), which
tritonclient.http uses by default. Every request passes the same steps as a gRPC call, as
middlewares: the bearer token first (checked before the body is read; the health endpoints stay
open, like grpc.health.v1), then request id, metrics and access log (``protocol="v2-http"``,
``method`` the protocol's RPC name), then error mapping: ``{"error": "..."}`` with the HTTP status
of the gRPC code the same error gets over gRPC.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Optional

import grpc
from aiohttp import web

from featurizer import __version__
from featurizer.inference.engine import Engine
from featurizer.inference.errors import InvalidArgument
from featurizer.inference.models import ModelManager
from featurizer.settings import Settings
from featurizer.rpc.auth import http_auth
from featurizer.rpc.error_mapping import http_errors
from featurizer.rpc.observability import http_observability, note
from featurizer.rpc.observation import CallRecorder
from featurizer.rpc.oip import tensors
from featurizer.rpc.oip.grpc_service import model_ready
from featurizer.rpc.oip.infer import infer
from featurizer.rpc.oip.metadata import EXTENSIONS, SERVER_NAME, parse_version, signature
from featurizer.rpc.oip.openapi import openapi_document

log = logging.getLogger(__name__)
HEADER_LENGTH = "Inference-Header-Content-Length"
UNROUTED = "unknown"  # the ``method`` label of a request no route matched


class HttpServer:
    """``await start()`` binds and serves; ``port`` is then the bound port. ``await stop()``
    stops accepting and lets requests in flight finish within the grace period."""

    def __init__(self, engine: Engine, manager: ModelManager, ready: Callable[[], Awaitable[bool]],
                 settings: Settings, token: Optional[str], recorder: CallRecorder) -> None:
        self.engine, self.manager, self.ready, self.settings = engine, manager, ready, settings
        self.port = 0
        self._runner: Optional[web.AppRunner] = None
        self._methods: dict[str, str] = {}  # route path -> the protocol's RPC name, for the method label
        self.app = web.Application(client_max_size=settings.max_message_bytes, middlewares=[
            http_auth(token, recorder, self.method_of),
            http_observability(recorder, self.method_of),
            http_errors(settings.max_message_bytes),
        ])
        model = "/v2/models/{model}"
        version = model + "/versions/{version}"
        self._get("/v2", self.server_metadata, "ServerMetadata")
        self._get("/v2/health/live", self.live, "ServerLive")
        self._get("/v2/health/ready", self.server_ready, "ServerReady")
        self._get("/v2/openapi.json", self.openapi, "OpenAPI")
        for base in (model, version):
            self._get(base, self.model_metadata, "ModelMetadata")
            self._get(base + "/ready", self.model_ready, "ModelReady")
            self.app.router.add_post(base + "/infer", self.infer)
            self._methods[base + "/infer"] = "ModelInfer"

    def _get(self, path: str, handler: Callable, method: str) -> None:
        self.app.router.add_get(path, handler)
        self._methods[path] = method

    def method_of(self, request: web.Request) -> str:
        """The RPC name of the route a request matched (the same names as over gRPC)."""
        resource = request.match_info.route.resource
        return self._methods.get(resource.canonical, UNROUTED) if resource is not None else UNROUTED

    async def start(self, host: str, port: int) -> int:
        s = self.settings
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                                     shutdown_timeout=s.grace_seconds)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=_ssl_context(s), reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]  # the bound port when 0 was asked for
        log.info("v2 HTTP listening on %s:%d%s", host, self.port, " (TLS)" if s.tls_cert else "")
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # ----- handlers ------------------------------------------------------------------------------
    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response({"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)})

    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def server_ready(self, request: web.Request) -> web.Response:
        ready = await self.ready()
        note(request, code=grpc.StatusCode.OK)  # "not ready" (503) is an answer, as ServerReady's ready=false
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def model_metadata(self, request: web.Request) -> web.Response:
        mv = self.manager.resolve(request.match_info["model"], parse_version(request.match_info.get("version", "")))
        return web.json_response(signature(self.manager, mv).as_json())

    async def model_ready(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        ready = model_ready(self.manager, name, request.match_info.get("version", ""))
        note(request, code=grpc.StatusCode.OK)
        return web.json_response({"name": name, "ready": ready}, status=200 if ready else 503)

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document(self.manager.model_names(), __version__))

    async def infer(self, request: web.Request) -> web.Response:
        body = await request.read()
        header, binary = _split(body, request.headers.get(HEADER_LENGTH))
        parameters = _object(header.get("parameters", {}), "parameters")
        inputs = _inputs(header.get("inputs"), binary)
        note(request, images=inputs[0].shape[0] if inputs and inputs[0].shape else 0)
        requested = _list(header.get("outputs", []), "outputs")
        names, binary_outputs = [], set()
        all_binary = parameters.pop("binary_data_output", False) is True
        for i, output in enumerate(requested):
            output = _object(output, f"outputs[{i}]")
            name = output.get("name")
            if not isinstance(name, str):
                raise InvalidArgument(f"outputs[{i}].name: required (a string)")
            names.append(name)
            if _object(output.get("parameters", {}), f"outputs[{i}].parameters").get("binary_data", all_binary) is True:
                binary_outputs.add(name)
        result = await infer(self.engine, self.manager, request.match_info["model"],
                             parse_version(request.match_info.get("version", "")), inputs, parameters, names)
        note(request, version=result.version)
        answer: dict[str, Any] = {"model_name": result.model, "model_version": str(result.version), "outputs": []}
        if isinstance(header.get("id"), str):
            answer["id"] = header["id"]
        chunks = []
        for tensor in result.outputs:
            entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
            if all_binary or tensor.name in binary_outputs:
                chunk = tensors.to_raw(tensor.data)
                entry["parameters"] = {"binary_data_size": len(chunk)}
                chunks.append(chunk)
            else:
                entry["data"] = tensors.to_json_data(tensor.data)
            answer["outputs"].append(entry)
        text = json.dumps(answer).encode()
        if not chunks:
            return web.Response(body=text, content_type="application/json")
        return web.Response(body=text + b"".join(chunks), content_type="application/octet-stream",
                            headers={HEADER_LENGTH: str(len(text))})


def _split(body: bytes, header_length: Optional[str]) -> tuple[dict, memoryview]:
    """The JSON header and the binary section after it."""
    if header_length is None:
        size = len(body)
    elif not header_length.strip().isdigit() or int(header_length) > len(body):
        raise InvalidArgument(f"{HEADER_LENGTH}: expected the JSON header's size in bytes (at most the body's "
                              f"{len(body)}), got {header_length[:40]!r}")
    else:
        size = int(header_length)
    try:
        header = json.loads(bytes(body[:size]))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidArgument(f"request body: not valid JSON ({error})") from None
    return _object(header, "request body"), memoryview(body)[size:]


def _inputs(raw: Any, binary: memoryview) -> list[tensors.Tensor]:
    out, offset = [], 0
    for i, entry in enumerate(_list(raw, "inputs")):
        entry = _object(entry, f"inputs[{i}]")
        name, datatype, shape = entry.get("name"), entry.get("datatype"), entry.get("shape")
        where = f"inputs[{i}] {name!r}"
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise InvalidArgument(f"inputs[{i}]: 'name' and 'datatype' are required strings")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise InvalidArgument(f"{where}: 'shape' must be a list of integers")
        size = _object(entry.get("parameters", {}), f"{where} parameters").get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
                raise InvalidArgument(f"{where}: binary_data_size {size!r} runs past the {len(binary)} bytes of "
                                      f"binary data after the JSON header")
            out.append(tensors.from_raw(name, datatype, shape, bytes(binary[offset:offset + size]), where))
            offset += size
        elif "data" in entry:
            out.append(tensors.from_json(name, datatype, shape, entry["data"], where))
        else:
            raise InvalidArgument(f"{where}: no 'data' and no binary_data_size parameter")
    if offset != len(binary):
        raise InvalidArgument(f"request body: {len(binary) - offset} bytes of binary data after the JSON header "
                              f"that no input claims (binary_data_size)")
    return out


def _object(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def _list(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise InvalidArgument(f"{where}: expected a JSON array, got {type(value).__name__}")
    return value


def _ssl_context(s: Settings) -> Optional[ssl.SSLContext]:
    """The gRPC port's TLS options, for HTTPS: the same certificate, and mTLS when a client CA is set."""
    if s.tls_cert is None or s.tls_key is None:  # settings hold both or neither
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(Path(s.tls_cert), Path(s.tls_key))
    if s.tls_client_ca:
        context.load_verify_locations(Path(s.tls_client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context
