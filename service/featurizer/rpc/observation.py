"""What one call did, for every protocol: counted in the request metrics and logged once.

Each call is one ``Observation``: started when the call arrives (in-flight +1), finished once
with its status code (in-flight -1, ``featurizer_requests_total``, the duration histogram, one
access line). The gRPC interceptor, the HTTP middleware and the token checks of both (a denied
call never reaches the others) all record through ``CallRecorder``, so a call is counted the same
way whichever protocol carried it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Optional

import grpc
from featurizer_client.v1 import featurizer_pb2
from featurizer_client.v2 import grpc_predict_v2_pb2

from featurizer.logs import access_log
from featurizer.metrics import Metrics

REQUEST_ID = "x-request-id"  # gRPC metadata key and HTTP header (HTTP headers are case-insensitive)
MAX_REQUEST_ID = 128


class Protocol(StrEnum):
    """The ``protocol`` label: which API carried a call."""

    FEATURIZER_V1 = "featurizer.v1"
    V2_GRPC = "v2-grpc"       # Open Inference Protocol, inference.GRPCInferenceService
    V2_HTTP = "v2-http"       # Open Inference Protocol, REST on --http-port


_GRPC_PROTOCOLS = {
    f"/{featurizer_pb2.DESCRIPTOR.services_by_name['Featurizer'].full_name}/": Protocol.FEATURIZER_V1,
    f"/{grpc_predict_v2_pb2.DESCRIPTOR.services_by_name['GRPCInferenceService'].full_name}/": Protocol.V2_GRPC,
}


@dataclass(frozen=True)
class Method:
    protocol: Protocol
    name: str          # the RPC's short name (Embed, ModelInfer, ...): the ``method`` label


def grpc_method(path: str) -> Optional[Method]:
    """The protocol and name of a gRPC method path; None outside featurizer's two APIs (health
    and reflection are neither counted nor guarded)."""
    for prefix, protocol in _GRPC_PROTOCOLS.items():
        if path.startswith(prefix):
            return Method(protocol, path[len(prefix):])
    return None


def request_id_from(metadata: Optional[Iterable[tuple[str, Any]]]) -> str:
    """The caller's request id (at most MAX_REQUEST_ID characters), or a fresh uuid4 hex."""
    given = dict(metadata or ()).get(REQUEST_ID, "")
    if isinstance(given, bytes):
        given = given.decode("utf-8", "replace")
    return str(given)[:MAX_REQUEST_ID] or uuid.uuid4().hex


class Observation:
    """One call in progress. ``model`` is what the caller named (kept, cut to 100 characters, in
    the access log); its ``model`` label is what ``CallRecorder`` makes of it."""

    def __init__(self, metrics: Metrics, method: Method, request_id: str, model: str, label: str,
                 images: int, *, stream: bool = False) -> None:
        self.metrics, self.method, self.request_id = metrics, method, request_id
        self.model, self.label, self.images, self.version = model[:100], label, images, 0
        # A stream ends OK even when some items failed: their codes are counted for the access log.
        self.item_errors: Optional[dict[str, int]] = {} if stream else None
        self.finished = False
        self.started = time.perf_counter()
        metrics.in_flight.labels(protocol=method.protocol, method=method.name).inc()

    def item_answered(self, error_code: str) -> None:
        """One stream answer sent; ``error_code`` names a per-item error ("" for a result)."""
        self.images += 1
        if error_code and self.item_errors is not None:
            self.item_errors[error_code] = self.item_errors.get(error_code, 0) + 1

    def finish(self, code: grpc.StatusCode) -> None:
        """Count and log the call, once (a second finish is ignored)."""
        if self.finished:
            return
        self.finished = True
        elapsed = time.perf_counter() - self.started
        m, protocol, name = self.metrics, self.method.protocol, self.method.name
        m.in_flight.labels(protocol=protocol, method=name).dec()
        m.requests.labels(protocol=protocol, method=name, model=self.label, code=code.name).inc()
        m.request_duration.labels(protocol=protocol, method=name, model=self.label).observe(elapsed)
        extra = {} if self.item_errors is None else {"item_errors": self.item_errors}
        access_log(method=name, model=self.model, version=self.version, images=self.images, status=code.name,
                   latency_ms=round(elapsed * 1000, 3), request_id=self.request_id, protocol=str(protocol), **extra)


class CallRecorder:
    """Starts observations. ``model_label`` turns the model a caller named into the ``model``
    label: the model an alias resolves to, "" when none was named, "unknown" for a name the
    registry does not hold (so a caller cannot grow the label set)."""

    def __init__(self, metrics: Metrics, model_label: Callable[[str], str]) -> None:
        self.metrics = metrics
        self.model_label = model_label

    def start(self, method: Method, request_id: str, model: str = "", images: int = 0, *,
              stream: bool = False) -> Observation:
        return Observation(self.metrics, method, request_id, model, self.model_label(model), images, stream=stream)

    def refused(self, method: Method, request_id: str, code: grpc.StatusCode) -> None:
        """A call refused before its request was read (no token): counted with ``model=""``."""
        self.start(method, request_id).finish(code)
