"""Cross-cutting RPC work: request ids, access logs, metrics, error mapping, bearer-token auth.

Domain errors raised anywhere below become their gRPC status here (one table: errors.py);
anything else becomes INTERNAL with a generic message and its traceback goes to the log.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections.abc import Callable

import grpc

from .errors import FeaturizerError, Unauthenticated, grpc_status
from .logs import access_log
from .metrics import Metrics
from .request_decoding import refuse_undecodable_stream, refuse_undecodable_unary, safe_deserializer

log = logging.getLogger(__name__)
SERVICE_PREFIX = "/featurizer.v1.Featurizer/"
OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
DEADLINE_SLACK_S = 0.25


def _rewrap(handler: grpc.RpcMethodHandler, unary: Callable, stream: Callable) -> grpc.RpcMethodHandler:
    """A handler of the same kind whose behaviour is wrapped by ``unary`` or ``stream``; requests
    protobuf cannot parse reach the behaviour as INVALID_ARGUMENT (request_decoding.py)."""
    deserializer = safe_deserializer(handler.request_deserializer)
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            unary(refuse_undecodable_unary(handler.unary_unary)), deserializer, handler.response_serializer)
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            stream(refuse_undecodable_stream(handler.stream_stream)), deserializer, handler.response_serializer)
    return handler


class ObservabilityInterceptor(grpc.aio.ServerInterceptor):
    """Times, counts and logs every featurizer RPC once, and maps errors to statuses."""

    def __init__(self, metrics: Metrics, known_model: Callable[[str], bool]) -> None:
        self.metrics = metrics
        self.known_model = known_model

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or not details.method.startswith(SERVICE_PREFIX):
            return handler
        method = details.method[len(SERVICE_PREFIX):]
        request_id = str(dict(details.invocation_metadata or ()).get("x-request-id", ""))[:128] or uuid.uuid4().hex

        def unary(behavior):
            async def wrapped(request, context):
                record = _Record(self, method, request_id, getattr(request, "model", ""), len(getattr(request, "images", ())))
                context.set_trailing_metadata(record.trailers)
                try:
                    response = await behavior(request, context)
                    record.version = getattr(response, "version", 0)
                    return response
                except BaseException as error:
                    await record.fail(error, context)
                finally:
                    record.finish()
            return wrapped

        def stream(behavior):
            async def wrapped(requests, context):
                record = _Record(self, method, request_id, "", 0)
                context.set_trailing_metadata(record.trailers)
                try:
                    async for response in behavior(requests, context):
                        record.images += 1
                        yield response
                except BaseException as error:
                    await record.fail(error, context)
                finally:
                    record.finish()
            return wrapped

        return _rewrap(handler, unary, stream)


class _Record:
    """What one RPC did, written to metrics and the access log when it ends."""

    def __init__(self, owner: ObservabilityInterceptor, method: str, request_id: str, model: str, images: int) -> None:
        self.owner, self.method, self.request_id = owner, method, request_id
        self.model = model if owner.known_model(model) else ("" if not model else "unknown")
        self.raw_model, self.images, self.version = model[:100], images, 0
        self.code = grpc.StatusCode.OK
        self.started = time.perf_counter()
        # The request id travels in trailers: response headers sent before the answer would
        # commit the call and stop the client's retry policy (UNAVAILABLE/RESOURCE_EXHAUSTED).
        self.trailers = (("x-request-id", request_id),)
        owner.metrics.in_flight.labels(method).inc()

    async def fail(self, error: BaseException, context) -> None:
        if isinstance(error, asyncio.CancelledError):  # the caller went away, or its deadline passed
            remaining = context.time_remaining()
            # The caller's own timer may cancel a moment before ours fires (our deadline starts
            # when its headers arrive): that too is the deadline, not a caller who gave up.
            expired = remaining is not None and remaining <= DEADLINE_SLACK_S
            self.code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
            raise error
        if isinstance(error, grpc.aio.AbortError):  # aborted below us: the code is on the context
            self.code = context.code() or grpc.StatusCode.UNKNOWN
            raise error
        self.code, message = grpc_status(error)
        if not isinstance(error, FeaturizerError):
            log.error("unexpected error in %s (request %s)", self.method, self.request_id, exc_info=error)
        await context.abort(self.code, message, trailing_metadata=self.trailers)

    def finish(self) -> None:
        elapsed = time.perf_counter() - self.started
        m = self.owner.metrics
        m.in_flight.labels(self.method).dec()
        m.requests.labels(self.method, self.model, self.code.name).inc()
        m.request_duration.labels(self.method, self.model).observe(elapsed)
        access_log(method=self.method, model=self.raw_model, version=self.version, images=self.images,
                   status=self.code.name, latency_ms=round(elapsed * 1000, 3), request_id=self.request_id)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` on every RPC except health and reflection."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIXES):
            return handler
        sent = dict(details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(sent.encode() if isinstance(sent, str) else sent, self._expected):
            return handler

        def refuse():
            raise Unauthenticated("missing or invalid bearer token (metadata 'authorization: Bearer <token>')")

        def unary(_behavior):
            async def denied(request, context):
                refuse()
            return denied

        def stream(_behavior):
            async def denied(requests, context):
                refuse()
                yield  # pragma: no cover - makes this an async generator
            return denied

        return _rewrap(handler, unary, stream)
