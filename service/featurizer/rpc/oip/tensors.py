"""Open Inference Protocol tensors <-> numpy, for gRPC messages and for HTTP JSON / binary data.

A v2 tensor is a name, a datatype ("FP32", "UINT8", "BYTES", ...), a shape and its elements,
which arrive one of three ways: typed ``contents`` (gRPC), a raw little-endian buffer (gRPC
``raw_input_contents``, HTTP binary data), or a JSON list (HTTP). BYTES elements in a raw buffer
are each prefixed by their 4-byte little-endian length. Every check names the tensor and what
was wrong; nothing here knows about models.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from featurizer.inference.errors import InvalidArgument

NUMPY_BY_DATATYPE: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
DATATYPES = (*NUMPY_BY_DATATYPE, "BYTES")
# The InferTensorContents field that holds each datatype (FP16 and BF16 have none: raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
MAX_RANK = 8
MAX_ELEMENTS = 2**31 - 1
_LENGTH = struct.Struct("<I")

Elements = Union[np.ndarray, list]  # numeric: an ndarray; BYTES: a list of bytes


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Elements           # numeric: ndarray of ``shape``; BYTES: flat list of bytes, row-major

    @property
    def count(self) -> int:
        return element_count(self.shape, self.name)


def element_count(shape: Sequence[int], where: str) -> int:
    """The number of elements ``shape`` holds, refusing shapes no request could fill."""
    if len(shape) > MAX_RANK:
        raise InvalidArgument(f"{where}: shape {list(shape)[:MAX_RANK + 1]} has {len(shape)} dimensions; "
                              f"at most {MAX_RANK} allowed")
    count = 1
    for d in shape:
        if d < 0:
            raise InvalidArgument(f"{where}: shape {list(shape)} has a negative dimension")
        count *= d
        if count > MAX_ELEMENTS:
            raise InvalidArgument(f"{where}: shape {list(shape)} holds more than {MAX_ELEMENTS} elements")
    return count


def check_datatype(datatype: str, where: str) -> None:
    if datatype not in DATATYPES:
        raise InvalidArgument(f"{where}: unknown datatype {datatype[:20]!r}; expected one of {', '.join(DATATYPES)}")


# ----- BYTES codec -----------------------------------------------------------------------------
def deserialize_bytes(buffer: bytes, count: int, where: str) -> list[bytes]:
    """A raw BYTES buffer (each element: 4-byte LE length, then its bytes) -> exactly ``count`` elements."""
    view = memoryview(buffer)
    out: list[bytes] = []
    pos = 0
    while pos < len(view):
        if pos + 4 > len(view):
            raise InvalidArgument(f"{where}: BYTES data ends inside an element's 4-byte length prefix "
                                  f"(at byte {pos} of {len(view)})")
        (size,) = _LENGTH.unpack_from(view, pos)
        pos += 4
        if pos + size > len(view):
            raise InvalidArgument(f"{where}: BYTES element {len(out)} claims {size} bytes but only "
                                  f"{len(view) - pos} remain")
        out.append(bytes(view[pos:pos + size]))
        pos += size
    if len(out) != count:
        raise InvalidArgument(f"{where}: BYTES data holds {len(out)} elements; the shape needs {count}")
    return out


def serialize_bytes(items: Sequence[bytes]) -> bytes:
    return b"".join(_LENGTH.pack(len(item)) + item for item in items)


# ----- decoding ----------------------------------------------------------------------------------
def from_raw(name: str, datatype: str, shape: Sequence[int], buffer: bytes, where: str) -> Tensor:
    """A tensor whose elements are a raw little-endian buffer (gRPC raw contents, HTTP binary data)."""
    check_datatype(datatype, where)
    shape = tuple(int(d) for d in shape)
    count = element_count(shape, where)
    if datatype == "BYTES":
        return Tensor(name, datatype, shape, deserialize_bytes(buffer, count, where))
    dtype = NUMPY_BY_DATATYPE[datatype]
    if len(buffer) != count * dtype.itemsize:
        raise InvalidArgument(f"{where}: a {datatype} tensor of shape {list(shape)} needs "
                              f"{count * dtype.itemsize} bytes, got {len(buffer)}")
    return Tensor(name, datatype, shape, np.frombuffer(buffer, dtype=dtype).reshape(shape))


def from_contents(name: str, datatype: str, shape: Sequence[int], contents: Any, where: str) -> Tensor:
    """A tensor whose elements are in a gRPC ``InferTensorContents``."""
    check_datatype(datatype, where)
    shape = tuple(int(d) for d in shape)
    count = element_count(shape, where)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidArgument(f"{where}: {datatype} has no contents field; send it in raw_input_contents")
    values = getattr(contents, field)
    if len(values) != count:
        raise InvalidArgument(f"{where}: contents.{field} holds {len(values)} elements; shape {list(shape)} "
                              f"needs {count}")
    if datatype == "BYTES":
        return Tensor(name, datatype, shape, list(values))
    return Tensor(name, datatype, shape, _numeric(values, datatype, shape, where))


def from_json(name: str, datatype: str, shape: Sequence[int], data: Any, where: str) -> Tensor:
    """A tensor whose elements are JSON (``data``: flat or nested lists, row-major). BYTES
    elements are strings (UTF-8 encoded here), as the HTTP protocol defines them."""
    check_datatype(datatype, where)
    shape = tuple(int(d) for d in shape)
    count = element_count(shape, where)
    flat = _flatten(data, where)
    if len(flat) != count:
        raise InvalidArgument(f"{where}: data holds {len(flat)} elements; shape {list(shape)} needs {count}")
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in flat):
            raise InvalidArgument(f"{where}: BYTES data must be strings")
        return Tensor(name, datatype, shape, [v.encode("utf-8", "surrogateescape") for v in flat])
    return Tensor(name, datatype, shape, _numeric(flat, datatype, shape, where))


def _numeric(values: Sequence[Any], datatype: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    """Numbers -> the datatype's array; values it cannot hold (3.5 or 300 as UINT8) are refused,
    not rounded or wrapped around."""
    dtype = NUMPY_BY_DATATYPE[datatype]
    try:
        wide = np.asarray(values, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        raise InvalidArgument(f"{where}: {datatype} data must be numbers") from None
    if wide.ndim != 1 and wide.size != 0:
        wide = wide.reshape(-1)
    if dtype.kind in "iub":
        info = np.iinfo(dtype) if dtype.kind != "b" else None
        low, high = (0, 1) if info is None else (info.min, info.max)
        if not (np.all(wide == np.floor(wide)) and np.all(wide >= low) and np.all(wide <= high)):
            raise InvalidArgument(f"{where}: {datatype} data must be integers in {low}..{high}")
    elif datatype == "FP32" and not np.all(np.abs(wide[np.isfinite(wide)]) <= np.finfo(np.float32).max):
        raise InvalidArgument(f"{where}: FP32 data out of range")
    return wide.astype(dtype).reshape(shape)


def _flatten(data: Any, where: str) -> list:
    if not isinstance(data, list):
        raise InvalidArgument(f"{where}: 'data' must be a JSON array, got {type(data).__name__}")
    out: list = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            out.append(value)
        else:
            stack.pop()
    return out


# ----- encoding ----------------------------------------------------------------------------------
def datatype_of(data: Elements) -> str:
    if isinstance(data, list):
        return "BYTES"
    for name, dtype in NUMPY_BY_DATATYPE.items():
        if dtype == data.dtype.newbyteorder("<") or dtype == data.dtype:
            return name
    raise TypeError(f"no v2 datatype for numpy dtype {data.dtype}")  # a featurizer bug, never the caller's


def to_raw(data: Elements) -> bytes:
    if isinstance(data, list):
        return serialize_bytes(data)
    return np.ascontiguousarray(data, dtype=NUMPY_BY_DATATYPE[datatype_of(data)]).tobytes()


def to_json_data(data: Elements) -> list:
    """Flat row-major JSON elements (BYTES as UTF-8 strings, the HTTP protocol's form)."""
    if isinstance(data, list):
        return [item.decode("utf-8", "replace") for item in data]
    return np.asarray(data).reshape(-1).tolist()
