"""Request ids, in-flight gauge, request metrics and the access log, for every featurizer call.

``ObservabilityInterceptor`` (gRPC: featurizer.v1 and the Open Inference Protocol) and
``http_observability`` (the protocol's REST side) start one ``Observation`` per call and finish
it once with the call's status code. They map no errors themselves: the error-mapping step
inside them has already turned any error into a status (``error_mapping.py``). A caller that
left (cancel, deadline) is CANCELLED or DEADLINE_EXCEEDED, never an error of ours.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Optional

import grpc
from aiohttp import web
from featurizer_client.v1 import featurizer_pb2 as v1
from featurizer_client.v2 import grpc_predict_v2_pb2 as v2

from featurizer.rpc.handlers import Behavior, behavior_of, rewrap
from featurizer.rpc.observation import (REQUEST_ID, CallRecorder, Method, Observation, Protocol, grpc_method,
                                        request_id_from)
from featurizer.rpc.status import code_of_http

DEADLINE_SLACK_S = 0.25
HTTP_REQUEST_ID = "X-Request-Id"  # the request id's HTTP header (case-insensitive on the way in)
# Where an HTTP request carries its Observation, and the code of the error it was answered with
# (set by the error middleware: a 400 may be INVALID_ARGUMENT or FAILED_PRECONDITION).
OBSERVATION = web.RequestKey("featurizer.observation", Observation)
CODE = web.RequestKey("featurizer.code", grpc.StatusCode)


class ObservabilityInterceptor(grpc.aio.ServerInterceptor):
    """Times, counts and logs every call of featurizer's two gRPC APIs once."""

    def __init__(self, recorder: CallRecorder) -> None:
        self.recorder = recorder

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        method = grpc_method(details.method)
        if handler is None or method is None:
            return handler
        request_id = request_id_from(details.invocation_metadata)
        behavior = behavior_of(handler)
        if handler.response_streaming:
            return rewrap(handler, self._stream(behavior, method, request_id, handler.request_streaming))
        return rewrap(handler, self._unary(behavior, method, request_id))

    def _unary(self, behavior: Behavior, method: Method, request_id: str) -> Behavior:
        async def observed(request, context):
            model, images = _asked(request)
            call = self.recorder.start(method, request_id, model, images)
            # The request id travels in trailers: response headers sent before the answer would
            # commit the call and stop the client's retry policy (UNAVAILABLE/RESOURCE_EXHAUSTED).
            context.set_trailing_metadata(((REQUEST_ID, request_id),))
            code = grpc.StatusCode.OK
            try:
                response = await behavior(request, context)
                call.version = _served_version(response)
                return response
            except BaseException as error:
                code = _code_of(error, context)
                raise
            finally:
                call.finish(code)
        return observed

    def _stream(self, behavior: Behavior, method: Method, request_id: str, request_streaming: bool) -> Behavior:
        async def observed(requests, context):
            # a stream of requests is read later, by the servicer: its images are counted as answered
            model, images = ("", 0) if request_streaming else _asked(requests)
            call = self.recorder.start(method, request_id, model, images, stream=True)
            context.set_trailing_metadata(((REQUEST_ID, request_id),))
            code = grpc.StatusCode.OK
            try:
                # aclosing: when grpc closes us, the generators below are closed now, in order,
                # not later by the garbage collector in a task nobody awaits.
                async with contextlib.aclosing(behavior(requests, context)) as answers:
                    async for response in answers:
                        call.item_answered(_item_error(response))
                        yield response
            except GeneratorExit:
                # grpc closes a stream's generator at its ``yield`` when the caller has left:
                # nothing can be sent any more.
                code = _departed(context)
                raise
            except BaseException as error:
                code = _code_of(error, context)
                raise
            finally:
                call.finish(code)
        return observed


def _code_of(error: BaseException, context) -> grpc.StatusCode:
    if isinstance(error, asyncio.CancelledError):
        return _departed(context)
    if isinstance(error, grpc.aio.AbortError):  # aborted below us: the code is on the context
        return context.code() or grpc.StatusCode.UNKNOWN
    return grpc.StatusCode.INTERNAL  # error mapping let something through: grpc answers UNKNOWN/INTERNAL


def _departed(context) -> grpc.StatusCode:
    """The caller went away, or its deadline passed: not an error of ours."""
    remaining = context.time_remaining()
    # The caller's own timer may cancel a moment before ours fires (our deadline starts when
    # its headers arrive): that too is the deadline, not a caller who gave up.
    expired = remaining is not None and remaining <= DEADLINE_SLACK_S
    return grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED


def _asked(request: Any) -> tuple[str, int]:
    """The model a request names and how many images it carries ("" and 0 when it names none,
    or could not be parsed)."""
    if isinstance(request, (v1.EmbedRequest, v1.PredictRequest)):
        return request.model, len(request.images)
    if isinstance(request, v1.GetModelRequest):
        return request.model, 0
    if isinstance(request, v2.ModelInferRequest):
        first = request.inputs[0].shape if request.inputs else ()
        return request.model_name, int(first[0]) if first else 0
    if isinstance(request, (v2.ModelReadyRequest, v2.ModelMetadataRequest)):
        return request.name, 0
    return "", 0


def _served_version(response: Any) -> int:
    if isinstance(response, (v1.EmbedResponse, v1.PredictResponse)):
        return response.version
    if isinstance(response, v2.ModelInferResponse) and response.model_version.isdigit():
        return int(response.model_version)
    return 0


def _item_error(response: Any) -> str:
    """The code name of a stream answer carrying a per-item ``error`` ("" for a result)."""
    if isinstance(response, (v1.EmbedStreamResponse, v1.PredictStreamResponse)) and response.HasField("error"):
        return response.error.code_name or "UNKNOWN"
    return ""


# ----- HTTP ----------------------------------------------------------------------------------------
def note(request: web.Request, *, version: Optional[int] = None, images: Optional[int] = None,
         code: Optional[grpc.StatusCode] = None) -> None:
    """What an HTTP handler knows of its call: the version served, the images it carried, and a
    code when the HTTP status alone would say otherwise (a "not ready" 503 is an answer, OK)."""
    call: Optional[Observation] = request.get(OBSERVATION)
    if call is not None and version is not None:
        call.version = version
    if call is not None and images is not None:
        call.images = images
    if code is not None:
        request[CODE] = code


def http_request_id(request: web.Request) -> str:
    """The ``X-Request-Id`` header (headers are case-insensitive), or a fresh id."""
    return request_id_from(((REQUEST_ID, request.headers.get(HTTP_REQUEST_ID, "")),))


def http_observability(recorder: CallRecorder, method_of: Callable[[web.Request], str]) -> Callable:
    """An aiohttp middleware observing every call as ``v2-http``; ``method_of`` names a request's
    route with the protocol's RPC name (ModelInfer, ...). The request id comes from the
    ``X-Request-Id`` header (or is made up) and goes back in the same header."""

    @web.middleware
    async def observe(request: web.Request, handler) -> web.StreamResponse:
        request_id = http_request_id(request)
        call = recorder.start(Method(Protocol.V2_HTTP, method_of(request)), request_id,
                              request.match_info.get("model", ""))
        request[OBSERVATION] = call
        code = grpc.StatusCode.INTERNAL
        try:
            response = await handler(request)
            code = request.get(CODE, code_of_http(response.status))
            response.headers[HTTP_REQUEST_ID] = request_id
            return response
        except asyncio.CancelledError:  # the client closed the connection
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            call.finish(code)

    return observe

