"""Errors become statuses here, for every featurizer call: gRPC (featurizer.v1 and the Open
Inference Protocol) and the protocol's REST side, through the one table in ``status.py``.

A domain error (``featurizer.inference.errors``) becomes its code and its message, verbatim;
anything else is INTERNAL with a generic message, its traceback logged with the request id.
A caller that left is not an error: cancellation passes through untouched (observability.py
counts it as CANCELLED or DEADLINE_EXCEEDED).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import grpc
from aiohttp import web

from featurizer.inference.errors import FeaturizerError
from featurizer.rpc.handlers import Behavior, behavior_of, rewrap
from featurizer.rpc.observability import CODE, OBSERVATION
from featurizer.rpc.observation import REQUEST_ID, grpc_method
from featurizer.rpc.status import grpc_status, http_status

log = logging.getLogger(__name__)


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Aborts a call of featurizer's gRPC APIs with the status of the error its behaviour raised."""

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        method = grpc_method(details.method)
        if handler is None or method is None:
            return handler
        behavior = behavior_of(handler)
        if handler.response_streaming:
            return rewrap(handler, _stream(behavior, method.name))
        return rewrap(handler, _unary(behavior, method.name))


def _unary(behavior: Behavior, method: str) -> Behavior:
    async def mapped(request, context):
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:  # already a status
            raise
        except Exception as error:
            await _abort(error, context, method)
    return mapped


def _stream(behavior: Behavior, method: str) -> Behavior:
    async def mapped(requests, context):
        try:
            # aclosing: closing this stream (the caller left) closes the behaviour's generator now.
            async with contextlib.aclosing(behavior(requests, context)) as answers:
                async for answer in answers:
                    yield answer
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await _abort(error, context, method)
    return mapped


async def _abort(error: Exception, context, method: str) -> None:
    code, message = grpc_status(error)
    if not isinstance(error, FeaturizerError):
        request_id = dict(context.trailing_metadata() or ()).get(REQUEST_ID, "")
        log.error("unexpected error in %s (request %s)", method, request_id, exc_info=error)
    # The trailers set so far (the request id) go with the status.
    await context.abort(code, message, trailing_metadata=tuple(context.trailing_metadata() or ()))


# ----- HTTP ----------------------------------------------------------------------------------------
def error_response(status: int, message: str, **headers: str) -> web.Response:
    """The protocol's REST error: ``{"error": "..."}`` with the HTTP status."""
    return web.json_response({"error": message}, status=status, headers=headers or None)


def http_errors(max_message_bytes: int) -> Callable:
    """An aiohttp middleware answering every error as the protocol's JSON error, with the HTTP
    status of the gRPC code the same error gets over gRPC."""

    @web.middleware
    async def errors(request: web.Request, handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return error_response(413, f"request body is above the limit of {max_message_bytes} "
                                       f"bytes (--max-message-bytes)")
        except web.HTTPException as error:  # no such route or method
            if error.status == 405:
                return error_response(405, f"{request.method} is not allowed on {request.path[:200]}")
            return error_response(error.status, f"{request.path[:200]}: {error.reason}; see GET /v2/openapi.json")
        except Exception as error:
            code, message = grpc_status(error)
            if not isinstance(error, FeaturizerError):
                call = request.get(OBSERVATION)
                log.error("unexpected error in %s %s (request %s)", request.method, request.path,
                          call.request_id if call is not None else "", exc_info=error)
            request[CODE] = code
            return error_response(http_status(code), message)

    return errors
