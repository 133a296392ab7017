"""The Open Inference Protocol (KServe v2) on featurizer's engine: gRPC ``inference.GRPCInferenceService``
(grpc_service.py) and HTTP/REST (http.py), sharing tensors.py, metadata.py and infer.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from grpc_health.v1 import health_pb2


def health_ready(health, service: str) -> Callable[[], Awaitable[bool]]:
    """Server readiness as the health service reports it for ``service`` (SERVING once every model
    was loaded, NOT_SERVING while starting and shutting down), so both protocols agree."""

    async def ready() -> bool:
        response = await health.Check(health_pb2.HealthCheckRequest(service=service), None)
        return response.status == health_pb2.HealthCheckResponse.SERVING

    return ready
