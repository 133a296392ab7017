"""Cross-cutting RPC work: request ids, access logs, metrics, error mapping, bearer-token auth.

Domain errors raised anywhere below become their gRPC status here (one table: errors.py);
anything else becomes INTERNAL with a generic message and its traceback goes to the log. A caller
that left (cancel, deadline) is CANCELLED or DEADLINE_EXCEEDED, never an error of ours.

Interceptors only choose a handler; request bytes are parsed afterwards, by the chosen handler's
deserializer. So the token check decides before anything is parsed, and a denied call is answered
by a handler whose deserializer parses nothing (``TokenAuthInterceptor``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, Optional

import grpc

from featurizer.inference.errors import FeaturizerError, Unauthenticated, grpc_status
from featurizer.logs import access_log
from featurizer.metrics import Metrics
from featurizer.rpc.request_decoding import refuse_undecodable_stream, refuse_undecodable_unary, safe_deserializer

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
    """Times, counts and logs every featurizer RPC once, and maps errors to statuses.

    ``model_label`` turns the model a caller named into the ``model`` label: the model an alias
    resolves to, "" when none was named, "unknown" for a name the registry does not hold (so a
    caller cannot grow the label set).
    """

    def __init__(self, metrics: Metrics, model_label: Callable[[str], str]) -> None:
        self.metrics = metrics
        self.model_label = model_label

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
                record = _Record(self, method, request_id, "", 0, stream=True)
                context.set_trailing_metadata(record.trailers)
                try:
                    # aclosing: when grpc closes us, the generators below are closed now, in order,
                    # not later by the garbage collector in a task nobody awaits.
                    async with contextlib.aclosing(behavior(requests, context)) as answers:
                        async for response in answers:
                            record.answered(response)
                            yield response
                except GeneratorExit:
                    # grpc closes a stream's generator at its ``yield`` when the caller has left:
                    # nothing can be sent any more, and awaiting context.abort here would fail.
                    record.departed(context)
                    raise
                except BaseException as error:
                    await record.fail(error, context)
                finally:
                    record.finish()
            return wrapped

        return _rewrap(handler, unary, stream)


class _Record:
    """What one RPC did, written to metrics and the access log when it ends."""

    def __init__(self, owner: ObservabilityInterceptor, method: str, request_id: str, model: str, images: int,
                 *, stream: bool = False) -> None:
        self.owner, self.method, self.request_id = owner, method, request_id
        self.model = owner.model_label(model)
        self.raw_model, self.images, self.version = model[:100], images, 0
        # A stream ends OK even when some items failed: their codes are counted for the access log.
        self.item_errors: Optional[dict[str, int]] = {} if stream else None
        self.code = grpc.StatusCode.OK
        self.started = time.perf_counter()
        # The request id travels in trailers: response headers sent before the answer would
        # commit the call and stop the client's retry policy (UNAVAILABLE/RESOURCE_EXHAUSTED).
        self.trailers = (("x-request-id", request_id),)
        owner.metrics.in_flight.labels(method).inc()

    def answered(self, response: Any) -> None:
        """One stream answer sent; a per-item error in it is counted by its code name."""
        self.images += 1
        code = _item_error(response)
        if code and self.item_errors is not None:
            self.item_errors[code] = self.item_errors.get(code, 0) + 1

    def departed(self, context) -> None:
        """The caller went away, or its deadline passed: not an error of ours."""
        remaining = context.time_remaining()
        # The caller's own timer may cancel a moment before ours fires (our deadline starts
        # when its headers arrive): that too is the deadline, not a caller who gave up.
        expired = remaining is not None and remaining <= DEADLINE_SLACK_S
        self.code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED

    async def fail(self, error: BaseException, context) -> None:
        if isinstance(error, asyncio.CancelledError):
            self.departed(context)
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
        extra = {} if self.item_errors is None else {"item_errors": self.item_errors}
        access_log(method=self.method, model=self.raw_model, version=self.version, images=self.images,
                   status=self.code.name, latency_ms=round(elapsed * 1000, 3), request_id=self.request_id, **extra)


def _item_error(response: Any) -> str:
    """The code name of a stream answer carrying a per-item ``error`` ("" for a result)."""
    field = response.DESCRIPTOR.fields_by_name.get("error")
    if field is None or field.message_type is None or not response.HasField("error"):
        return ""
    return response.error.code_name or "UNKNOWN"


def _unread(data: bytes) -> None:
    """The deserializer of a denied call: its request bytes are dropped, never parsed."""
    return None


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` on every RPC except health and reflection.

    The check runs while grpc picks the handler, before any request bytes are read. A denied call
    gets one of four handlers built here once (one per RPC kind, as grpc's auth examples do):
    their deserializer parses nothing, so a stranger's bytes never reach protobuf and the answer
    says nothing about them. The outer ``ObservabilityInterceptor`` still counts and logs the
    call, as UNAUTHENTICATED with an empty model (the request was never read).
    """

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()
        code, message = grpc_status(Unauthenticated(
            "missing or invalid bearer token (metadata 'authorization: Bearer <token>')"))

        async def deny(request, context):
            await context.abort(code, message)

        async def deny_stream(request, context):
            await context.abort(code, message)
            yield  # pragma: no cover - makes this an async generator

        self._denials = {
            "unary_unary": grpc.unary_unary_rpc_method_handler(deny, _unread),
            "unary_stream": grpc.unary_stream_rpc_method_handler(deny_stream, _unread),
            "stream_unary": grpc.stream_unary_rpc_method_handler(deny, _unread),
            "stream_stream": grpc.stream_stream_rpc_method_handler(deny_stream, _unread),
        }

    async def intercept_service(self, continuation, details):
        if details.method.startswith(OPEN_PREFIXES):
            return await continuation(details)
        sent = dict(details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(sent.encode() if isinstance(sent, str) else sent, self._expected):
            return await continuation(details)
        handler = await continuation(details)  # only to learn the RPC's kind; nothing is read yet
        if handler is None:  # no such method: UNIMPLEMENTED, as for a caller with a token
            return None
        kind = next(k for k in self._denials if getattr(handler, k) is not None)
        return self._denials[kind]
