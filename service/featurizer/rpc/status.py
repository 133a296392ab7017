"""The one table from domain errors to gRPC status codes, and from those codes to HTTP statuses.

Code below the transports raises ``featurizer.inference.errors``; the error-mapping step of each
transport (``error_mapping.py``) turns them into statuses here. Anything else is a bug: INTERNAL
with a generic message, its traceback to the log, never to the client.
"""

from __future__ import annotations

import grpc

from featurizer.inference.errors import (DeadlineExceeded, FailedPrecondition, FeaturizerError, InferenceFailed,
                                         InvalidArgument, NotFound, Overloaded, Unauthenticated, Unavailable)

STATUS_BY_ERROR: dict[type[FeaturizerError], grpc.StatusCode] = {
    NotFound: grpc.StatusCode.NOT_FOUND,
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    InferenceFailed: grpc.StatusCode.INTERNAL,
}

INTERNAL_MESSAGE = "internal error; the server log has the details"

# The HTTP status of each gRPC code, as the Open Inference Protocol's REST side uses them
# (499 is the de-facto "client closed request"; FAILED_PRECONDITION is the caller's 400).
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNIMPLEMENTED: 501, grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
# An HTTP status the server answered without a domain error (no route: 404, body too large: 413)
# -> the code it is counted under; the first code of each status in HTTP_STATUS, plus 413 and 405.
CODE_BY_HTTP_STATUS: dict[int, grpc.StatusCode] = {
    **{status: code for code, status in reversed(HTTP_STATUS.items())},
    405: grpc.StatusCode.UNIMPLEMENTED, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def grpc_status(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-safe message for any exception."""
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls], str(error)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


def http_status(code: grpc.StatusCode) -> int:
    return HTTP_STATUS.get(code, 500)


def code_of_http(status: int) -> grpc.StatusCode:
    """The code an HTTP answer is counted under: OK below 400, else its gRPC twin (UNKNOWN if none)."""
    if status < 400:
        return grpc.StatusCode.OK
    return CODE_BY_HTTP_STATUS.get(status, grpc.StatusCode.UNKNOWN)
