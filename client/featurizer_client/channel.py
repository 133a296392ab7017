"""How the SDK connects: retries and load balancing through gRPC's own service config, TLS, token.

Retries are gRPC's ``retryPolicy`` (gRFC A6), not a loop of ours: gRPC re-sends a call that failed
with UNAVAILABLE or RESOURCE_EXHAUSTED, with exponential backoff, as long as the server has not
started answering it. Targets may name several servers (``dns:///host:port`` or
``ipv4:10.0.0.1:50051,10.0.0.2:50051``); ``round_robin`` spreads calls over all of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import grpc

PathOrBytes = Union[str, Path, bytes]
MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # embeddings of big batches exceed gRPC's 4 MB default
SERVICE = "featurizer.v1.Featurizer"


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC's retryPolicy for every featurizer method. gRPC caps ``max_attempts`` at 5."""

    max_attempts: int = 5
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    backoff_multiplier: float = 2.0
    # CANCELLED too: a server shutting down cancels the calls it received but had not started
    # (grpc/grpc#41785). Retrying is safe: gRPC never retries a call the caller cancelled, nor
    # one whose answer had begun.
    codes: tuple[str, ...] = ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "CANCELLED")

    def as_json(self) -> dict:
        return {"maxAttempts": self.max_attempts, "initialBackoff": f"{self.initial_backoff}s",
                "maxBackoff": f"{self.max_backoff}s", "backoffMultiplier": self.backoff_multiplier,
                "retryableStatusCodes": list(self.codes)}


@dataclass(frozen=True)
class Tls:
    """TLS to a server started with ``--tls-cert/--tls-key`` (and ``--tls-client-ca`` for mTLS).

    ``root_certificates``: the CA that signed the server's certificate (None = system roots).
    ``certificate_chain`` + ``private_key``: this client's certificate, for mTLS.
    ``server_name``: overrides the name checked against the certificate (e.g. for an IP target).
    """

    root_certificates: Optional[PathOrBytes] = None
    certificate_chain: Optional[PathOrBytes] = None
    private_key: Optional[PathOrBytes] = None
    server_name: Optional[str] = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(_read(self.root_certificates), _read(self.private_key),
                                            _read(self.certificate_chain))


@dataclass(frozen=True)
class Connection:
    """Everything about reaching a server, shared by the sync and async clients."""

    target: str
    tls: Optional[Tls] = None
    token: Optional[str] = None              # sent as ``authorization: Bearer <token>``
    retry: Optional[RetryPolicy] = field(default_factory=RetryPolicy)
    load_balancing: str = "round_robin"
    wait_for_ready: bool = True              # calls wait for a (re)connecting server until their deadline

    def service_config(self) -> str:
        config: dict = {"loadBalancingConfig": [{self.load_balancing: {}}]}
        if self.retry is not None:
            config["methodConfig"] = [{"name": [{"service": SERVICE}], "retryPolicy": self.retry.as_json()}]
        return json.dumps(config)

    def options(self) -> list[tuple[str, Union[str, int]]]:
        options: list[tuple[str, Union[str, int]]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.service_config", self.service_config()),
            ("grpc.enable_retries", 1 if self.retry is not None else 0),
            # Reconnect to a restarted server within ~2 s, not gRPC's default of up to 120 s.
            ("grpc.initial_reconnect_backoff_ms", 250),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if self.tls is not None and self.tls.server_name:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        return options

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def sync_channel(self) -> grpc.Channel:
        if self.tls is None:
            return grpc.insecure_channel(self.target, options=self.options())
        return grpc.secure_channel(self.target, self.tls.credentials(), options=self.options())

    def aio_channel(self) -> grpc.aio.Channel:
        if self.tls is None:
            return grpc.aio.insecure_channel(self.target, options=self.options())
        return grpc.aio.secure_channel(self.target, self.tls.credentials(), options=self.options())


def read_token(path: Union[str, Path]) -> str:
    """The token in a file like the server's ``--auth-token-file`` (surrounding whitespace dropped)."""
    return Path(path).read_text().strip()


def _read(value: Optional[PathOrBytes]) -> Optional[bytes]:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()
