"""Request bytes that protobuf refuses (e.g. a string field holding invalid UTF-8) become a clear
INVALID_ARGUMENT naming the field, instead of grpc's generic UNKNOWN from a raising deserializer.

The deserializer cannot abort a call, so it returns an ``UndecodableRequest`` and the behaviour
raises ``InvalidArgument`` with its message inside the RPC, where the error mapping outside it
makes that a status. ``DecodingInterceptor`` installs both, once, for featurizer's two gRPC APIs;
it is the innermost interceptor, so the deserializer grpc runs is this one (the token check,
outermost, swaps in a deserializer that parses nothing for a denied call).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError

from featurizer.inference.errors import InvalidArgument
from featurizer.rpc.handlers import Behavior, behavior_of, rewrap
from featurizer.rpc.observation import grpc_method

MAX_SHOWN_BYTES = 40


@dataclass(frozen=True)
class UndecodableRequest:
    """Stands in for a request message that could not be parsed; ``message`` is client-safe."""

    message: str


def safe_deserializer(deserialize: Optional[Callable[[bytes], Any]]) -> Optional[Callable[[bytes], Any]]:
    """Wrap a ``Message.FromString`` so parse failures come back as an ``UndecodableRequest``."""
    if deserialize is None:
        return None
    descriptor: Optional[Descriptor] = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError:
            bad = _bad_utf8_field(data, descriptor) if descriptor is not None else None
            if bad is not None:
                path, value = bad
                shown = value[:MAX_SHOWN_BYTES] + (b"..." if len(value) > MAX_SHOWN_BYTES else b"")
                return UndecodableRequest(f"{path}: not valid UTF-8 ({shown!r}); string fields must be UTF-8")
            name = descriptor.full_name if descriptor is not None else "request"
            return UndecodableRequest(f"request: cannot parse {len(data)} bytes as {name}")
    return parse


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("bad varint")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def _bad_utf8_field(data: bytes, descriptor: Descriptor, prefix: str = "") -> Optional[tuple[str, bytes]]:
    """The first string field (dotted path) whose bytes are not UTF-8, walking the wire format."""
    pos, counts = 0, dict[int, int]()
    try:
        while pos < len(data):
            key, pos = _varint(data, pos)
            number, wire = key >> 3, key & 7
            if wire != 2:  # a scalar: skipped (an unknown wire type cannot be walked)
                pos = _skip_scalar(data, pos, wire)
                continue
            size, pos = _varint(data, pos)
            value, pos = data[pos:pos + size], pos + size
            field = descriptor.fields_by_number.get(number)
            if field is None:
                continue
            name = prefix + field.name
            if field.is_repeated:
                name += f"[{counts.setdefault(number, 0)}]"
                counts[number] += 1
            found = _bad_utf8_in(name, value, field)
            if found is not None:
                return found
    except (ValueError, AttributeError):  # not well-formed enough to point at a field
        return None
    return None


def _skip_scalar(data: bytes, pos: int, wire: int) -> int:
    """The position after a varint (wire 0), fixed64 (1) or fixed32 (5) value."""
    if wire == 0:
        return _varint(data, pos)[1]
    if wire in (1, 5):
        return pos + (8 if wire == 1 else 4)
    raise ValueError(f"wire type {wire}")


def _bad_utf8_in(name: str, value: bytes, field: FieldDescriptor) -> Optional[tuple[str, bytes]]:
    """``value`` itself if ``field`` is a string it does not hold as UTF-8, or the first such
    string inside it if it is a message."""
    if field.type == FieldDescriptor.TYPE_STRING:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return name, value
        return None
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return _bad_utf8_field(value, field.message_type, name + ".")
    return None


def _check(request: Any) -> Any:
    if isinstance(request, UndecodableRequest):
        raise InvalidArgument(request.message)
    return request


class DecodingInterceptor(grpc.aio.ServerInterceptor):
    """The safe deserializer, and the check that refuses what it could not parse."""

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or grpc_method(details.method) is None:
            return handler
        guarded = refuse_undecodable(behavior_of(handler), handler.request_streaming, handler.response_streaming)
        return rewrap(handler, guarded, safe_deserializer(handler.request_deserializer))


def refuse_undecodable(behavior: Behavior, request_streaming: bool, response_streaming: bool) -> Behavior:
    """``behavior`` raising InvalidArgument at an unparsable request (for a stream of requests: when
    its iterator reaches one), for each of grpc's four kinds of method."""

    def requests_of(request: Any) -> Any:
        if not request_streaming:
            return _check(request)

        async def checked():
            async for item in request:
                yield _check(item)
        return checked()

    if not response_streaming:
        async def unary(request, context):
            return await behavior(requests_of(request), context)
        return unary

    async def stream(request, context):
        # aclosing: closing this stream (the caller left) closes the behaviour's generator now.
        async with contextlib.aclosing(behavior(requests_of(request), context)) as responses:
            async for response in responses:
                yield response
    return stream
