"""Domain errors: what can go wrong for a caller, independent of the transport that carries it.

Code below the transports raises these; each transport maps them to its statuses through the one
table in ``featurizer.rpc.status``. Anything else is a bug: INTERNAL with a generic message,
traceback to the log.
"""

from __future__ import annotations


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
