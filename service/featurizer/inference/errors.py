"""Domain errors and the one table that maps them to gRPC status codes.

Code below the servicer raises these; the servicer layer turns them into statuses with
``grpc_status``. Anything else is a bug: INTERNAL with a generic message, traceback to the log.
"""

from __future__ import annotations

import grpc


class FeaturizerError(Exception):
    """Base of every error a client may see; the message is sent to the client verbatim."""


class NotFound(FeaturizerError):
    """Unknown model, alias or version."""


class InvalidArgument(FeaturizerError):
    """A bad image, tensor, option or request shape."""


class Overloaded(FeaturizerError):
    """Admission refused: the model's queue is full."""


class Unavailable(FeaturizerError):
    """The version is unloading, or the server is shutting down."""


class FailedPrecondition(FeaturizerError):
    """The version failed to load, or the model kind cannot do what was asked."""


class DeadlineExceeded(FeaturizerError):
    """The caller's deadline passed before the work was done."""


class Unauthenticated(FeaturizerError):
    """Missing or wrong bearer token."""


class InferenceFailed(FeaturizerError):
    """The forward pass of a batch raised; every caller of that batch gets this."""


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


def grpc_status(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-safe message for any exception."""
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls], str(error)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
