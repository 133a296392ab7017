"""How the SDK connects: retries and load balancing through gRPC's own service config, TLS, token.

Retries are gRPC's ``retryPolicy`` (gRFC A6), not a loop of ours: gRPC re-sends a call that failed
with UNAVAILABLE or RESOURCE_EXHAUSTED, with exponential backoff, as long as the server has not
started answering it. Targets may name several servers (``dns:///host:port`` or
``ipv4:10.0.0.1:50051,10.0.0.2:50051``); ``round_robin`` spreads calls over all of them.

Waiting for a server (``Reach``): gRPC's wait-for-ready alone holds a call to a wrong or dead
target until its deadline (60 s by default) and then says only DEADLINE_EXCEEDED. So until the
client has once been connected, a call waits at most ``connect_timeout`` seconds, then fails with
UNAVAILABLE naming the target. Once connected, a call waits for a lost server up to its own
deadline: a restart on the same port (about 4 s idle, over 10 s on busy cores) or a rolling deploy
costs the job nothing.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import grpc

from .errors import FeaturizerError

PathOrBytes = Union[str, Path, bytes]
MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # embeddings of big batches exceed gRPC's 4 MB default
SERVICE = "featurizer.v1.Featurizer"
TARGET_ENV = "FEATURIZER_TARGET"
DEFAULT_TARGET = "localhost:50051"
# A first connection to a listening server takes milliseconds; this leaves room for a server that
# is still binding its port, and fails a typo'd or dead target in seconds rather than a minute.
DEFAULT_CONNECT_TIMEOUT_S = 5.0


def default_target() -> str:
    """The server the SDK and the CLI talk to when given none: $FEATURIZER_TARGET, else localhost:50051."""
    return os.environ.get(TARGET_ENV) or DEFAULT_TARGET


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
    wait_for_ready: bool = True              # calls wait for a (re)connecting server (see Reach)
    connect_timeout: Optional[float] = DEFAULT_CONNECT_TIMEOUT_S  # first connection; None: the call's deadline

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


NOT_CONNECTED = (grpc.ChannelConnectivity.IDLE, grpc.ChannelConnectivity.CONNECTING,
                 grpc.ChannelConnectivity.TRANSIENT_FAILURE)


def connectivity(channel: grpc.Channel) -> Optional[grpc.ChannelConnectivity]:
    """The channel's state now, without asking it to connect; None for a channel we cannot read.

    Read from gRPC's core channel (``channel._channel``, not public API), as gRPC's own
    connectivity poller reads it. The public ``subscribe()`` starts that poller thread, which
    raises ("Channel closed!") in the background when the channel is closed soon after, as a
    short-lived client (the CLI) always closes it. Any other channel object gives None, and its
    calls simply take the waiting path.
    """
    check = getattr(getattr(channel, "_channel", None), "check_connectivity_state", None)
    if check is None:
        return None
    code = check(False)
    return next((state for state in grpc.ChannelConnectivity if state.value[0] == code), None)


class Reach:
    """How long a call waits for a connection, shared by both clients (see the module docstring).

    The clients ask ``must_wait`` before each call; a channel that is READY costs one state read.
    """

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.reached = False  # connected at least once since the last call lost its server

    def connected(self) -> None:
        self.reached = True

    def must_wait(self, state: Optional[grpc.ChannelConnectivity]) -> bool:
        """Whether a call must first wait (up to ``window``) for READY. If not, it is sent now, and
        gRPC's wait-for-ready holds it while a lost server reconnects, up to its deadline."""
        if state is grpc.ChannelConnectivity.READY:
            self.reached = True
        return self.connection.wait_for_ready and not self.reached

    def window(self, timeout: Optional[float]) -> Optional[float]:
        """Seconds a call with this ``timeout`` waits for a first connection (None: no bound)."""
        limit = self.connection.connect_timeout
        if limit is None:
            return timeout
        return limit if timeout is None else min(limit, timeout)

    def timed_out(self, timeout: Optional[float], window: Optional[float]) -> FeaturizerError:
        """No connection within ``window``: UNAVAILABLE naming the target, or DEADLINE_EXCEEDED
        when the call's own (shorter) timeout was the window."""
        if timeout is not None and window is not None and window >= timeout:
            return FeaturizerError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                   f"deadline of {timeout:g} s passed before a connection to featurizer at "
                                   f"{self.connection.target} was made")
        return self.unreachable(f"no connection within {window:g} s")

    def failure(self, failed: FeaturizerError, state: Optional[grpc.ChannelConnectivity]) -> FeaturizerError:
        """What a failed call raises: one that ended without a connection names the target."""
        if state not in NOT_CONNECTED:
            return failed
        if not self.connection.wait_for_ready and failed.code is grpc.StatusCode.UNAVAILABLE:
            return self.unreachable(f"no connection ({failed.details})")  # fail-fast: gRPC's words kept
        if self.connection.wait_for_ready and failed.code is grpc.StatusCode.DEADLINE_EXCEEDED and self.reached:
            self.reached = False  # gone for a whole deadline: the next calls fail fast again
            return self.unreachable("the connection was lost and did not come back within the call's deadline")
        return failed

    def unreachable(self, why: str) -> FeaturizerError:
        return FeaturizerError(grpc.StatusCode.UNAVAILABLE, f"cannot reach featurizer at {self.connection.target}: "
                                                            f"{why}; is the server running and the address right?")


def wait_until_ready(channel: grpc.Channel, window: Optional[float]) -> Optional[float]:
    """Seconds spent waiting for ``channel`` to be READY, None when ``window`` passed first."""
    start = time.monotonic()
    future = grpc.channel_ready_future(channel)  # also starts connecting an IDLE channel
    try:
        future.result(timeout=window)
    except grpc.FutureTimeoutError:
        future.cancel()
        return None
    return time.monotonic() - start


def read_token(path: Union[str, Path]) -> str:
    """The token in a file like the server's ``--auth-token-file`` (surrounding whitespace dropped)."""
    return Path(path).read_text().strip()


def _read(value: Optional[PathOrBytes]) -> Optional[bytes]:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()
