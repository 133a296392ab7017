"""gRPC method handlers rebuilt around a wrapped behaviour, for the interceptors.

A ``grpc.RpcMethodHandler`` holds one behaviour for its kind (unary or streaming request and
response) plus the request deserializer grpc will run on the bytes. Each interceptor here wraps
the behaviour of the handler it got from the next one in; the deserializer travels along unless
one is given (``request_decoding.py`` gives the safe one, once).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import grpc

Behavior = Callable[..., Any]
Deserializer = Callable[[bytes], Any]

# (request_streaming, response_streaming) -> the handler's behaviour attribute and its factory
_KINDS: dict[tuple[bool, bool], tuple[str, Callable[..., grpc.RpcMethodHandler]]] = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


def behavior_of(handler: grpc.RpcMethodHandler) -> Behavior:
    """The handler's behaviour, whichever its kind."""
    attribute, _ = _KINDS[(handler.request_streaming, handler.response_streaming)]
    return getattr(handler, attribute)


def rewrap(handler: grpc.RpcMethodHandler, behavior: Behavior,
           deserializer: Optional[Deserializer] = None) -> grpc.RpcMethodHandler:
    """A handler of the same kind and response serializer with ``behavior`` (and ``deserializer``
    when given, else the handler's own)."""
    _, factory = _KINDS[(handler.request_streaming, handler.response_streaming)]
    return factory(behavior, deserializer or handler.request_deserializer, handler.response_serializer)
