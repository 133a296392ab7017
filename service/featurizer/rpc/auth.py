"""Bearer-token auth, first of all steps, for gRPC and for the Open Inference Protocol's REST side.

gRPC: the check runs while grpc picks the handler, before any request bytes are read. A denied
call gets one of four handlers built here once (one per RPC kind, as grpc's own auth examples
do): their deserializer parses nothing, so a stranger's bytes never reach protobuf and the answer
says nothing about them. HTTP: the header is checked before the body is read. Health (and gRPC
reflection) stay open. The other steps never see a denied call, so the check counts and logs it
itself, as UNAUTHENTICATED with ``model=""`` (the request was never read).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Optional, Union

import grpc
from aiohttp import web

from featurizer.inference.errors import Unauthenticated
from featurizer.rpc.error_mapping import error_response
from featurizer.rpc.observability import HTTP_REQUEST_ID, http_request_id
from featurizer.rpc.observation import REQUEST_ID, CallRecorder, Method, Protocol, grpc_method, request_id_from
from featurizer.rpc.status import grpc_status, http_status

OPEN_GRPC_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
OPEN_HTTP_PATHS = ("/v2/health/live", "/v2/health/ready")
GRPC_DENIAL = Unauthenticated("missing or invalid bearer token (metadata 'authorization: Bearer <token>')")
HTTP_DENIAL = Unauthenticated("missing or invalid bearer token (header 'Authorization: Bearer <token>')")


def token_matches(sent: Union[str, bytes, None], expected: bytes) -> bool:
    """Whether ``sent`` is the expected ``Bearer <token>``, compared in constant time."""
    if sent is None:
        return False
    return hmac.compare_digest(sent.encode("utf-8", "replace") if isinstance(sent, str) else sent, expected)


def _unread(data: bytes) -> None:
    """The deserializer of a denied call: its request bytes are dropped, never parsed."""
    return None


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` on every RPC except health and reflection."""

    def __init__(self, token: str, recorder: CallRecorder) -> None:
        self._expected = f"Bearer {token}".encode()
        self.recorder = recorder
        self.code, message = grpc_status(GRPC_DENIAL)
        code = self.code

        async def deny(request, context):
            await context.abort(code, message, trailing_metadata=_echoed_request_id(context))

        async def deny_stream(request, context):
            await context.abort(code, message, trailing_metadata=_echoed_request_id(context))
            yield  # pragma: no cover - makes this an async generator

        self._denials = {
            (False, False): grpc.unary_unary_rpc_method_handler(deny, _unread),
            (False, True): grpc.unary_stream_rpc_method_handler(deny_stream, _unread),
            (True, False): grpc.stream_unary_rpc_method_handler(deny, _unread),
            (True, True): grpc.stream_stream_rpc_method_handler(deny_stream, _unread),
        }

    async def intercept_service(self, continuation, details):
        if details.method.startswith(OPEN_GRPC_PREFIXES):
            return await continuation(details)
        metadata = details.invocation_metadata or ()
        if token_matches(dict(metadata).get("authorization"), self._expected):
            return await continuation(details)
        handler = await continuation(details)  # only to learn the RPC's kind; nothing is read yet
        if handler is None:  # no such method: UNIMPLEMENTED, as for a caller with a token
            return None
        method = grpc_method(details.method)
        if method is not None:
            self.recorder.refused(method, request_id_from(metadata), self.code)
        return self._denials[(handler.request_streaming, handler.response_streaming)]


def _echoed_request_id(context) -> tuple[tuple[str, str], ...]:
    """The caller's own request id, if it sent one, back in the denial's trailers."""
    given = dict(context.invocation_metadata() or ()).get(REQUEST_ID)
    return ((REQUEST_ID, request_id_from(((REQUEST_ID, given),))),) if given else ()


def http_auth(token: Optional[str], recorder: CallRecorder, method_of: Callable[[web.Request], str]) -> Callable:
    """An aiohttp middleware refusing (401, before the body is read) a request without the token;
    ``token`` None lets everything through."""
    expected = f"Bearer {token}".encode() if token is not None else None
    code, message = grpc_status(HTTP_DENIAL)

    @web.middleware
    async def auth(request: web.Request, handler) -> web.StreamResponse:
        if expected is None or request.path in OPEN_HTTP_PATHS:
            return await handler(request)
        if token_matches(request.headers.get("Authorization", ""), expected):
            return await handler(request)
        request_id = http_request_id(request)
        recorder.refused(Method(Protocol.V2_HTTP, method_of(request)), request_id, code)
        return error_response(http_status(code), message, **{"WWW-Authenticate": "Bearer", HTTP_REQUEST_ID: request_id})

    return auth
