"""Request bytes that protobuf refuses (e.g. a string field holding invalid UTF-8) become a clear
INVALID_ARGUMENT naming the field, instead of grpc's generic UNKNOWN from a raising deserializer.

The deserializer cannot abort a call, so it returns an ``UndecodableRequest`` and the
interceptor raises ``InvalidArgument`` with its message inside the RPC.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError

from featurizer.inference.errors import InvalidArgument

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
    pos, counts = 0, {}
    try:
        while pos < len(data):
            key, pos = _varint(data, pos)
            number, wire = key >> 3, key & 7
            if wire == 0:
                _, pos = _varint(data, pos)
            elif wire == 1 or wire == 5:
                pos += 8 if wire == 1 else 4
            elif wire == 2:
                size, pos = _varint(data, pos)
                value, pos = data[pos:pos + size], pos + size
                field = descriptor.fields_by_number.get(number)
                if field is None:
                    continue
                name = prefix + field.name
                if field.is_repeated:
                    name += f"[{counts.setdefault(number, 0)}]"
                    counts[number] += 1
                if field.type == FieldDescriptor.TYPE_STRING:
                    try:
                        value.decode("utf-8")
                    except UnicodeDecodeError:
                        return name, value
                elif field.type == FieldDescriptor.TYPE_MESSAGE:
                    found = _bad_utf8_field(value, field.message_type, name + ".")
                    if found is not None:
                        return found
            else:
                return None
    except (ValueError, AttributeError):  # not well-formed enough to point at a field
        return None
    return None


def _check(request: Any) -> Any:
    if isinstance(request, UndecodableRequest):
        raise InvalidArgument(request.message)
    return request


def refuse_undecodable_unary(behavior: Callable) -> Callable:
    """A unary behaviour that raises InvalidArgument for an unparsable request."""
    async def guarded(request, context):
        return await behavior(_check(request), context)
    return guarded


def refuse_undecodable_stream(behavior: Callable) -> Callable:
    """A stream behaviour whose request iterator raises InvalidArgument at an unparsable message."""
    async def guarded(requests, context):
        async def checked():
            async for request in requests:
                yield _check(request)
        # aclosing: closing this stream (the caller left) closes the behaviour's generator now.
        async with contextlib.aclosing(behavior(checked(), context)) as responses:
            async for response in responses:
                yield response
    return guarded
