"""numpy <-> ``featurizer.v1.Tensor``: raw little-endian bytes + shape + dtype.

Shared by the client and the server so that both ends agree on one encoding.
"""

from __future__ import annotations

import numpy as np

from .v1 import featurizer_pb2 as pb

_NUMPY_BY_DTYPE: dict[int, np.dtype] = {
    pb.DTYPE_UINT8: np.dtype("u1"),
    pb.DTYPE_FLOAT32: np.dtype("<f4"),
    pb.DTYPE_FLOAT16: np.dtype("<f2"),
}
_DTYPE_BY_KIND: dict[str, int] = {"uint8": pb.DTYPE_UINT8, "float32": pb.DTYPE_FLOAT32, "float16": pb.DTYPE_FLOAT16}


class TensorFormatError(ValueError):
    """A Tensor message whose dtype, shape and byte length do not agree."""


def numpy_dtype(dtype: int) -> np.dtype:
    """The little-endian numpy dtype for a ``DType`` value."""
    try:
        return _NUMPY_BY_DTYPE[dtype]
    except KeyError:
        name = pb.DType.Name(dtype) if dtype in pb.DType.values() else str(dtype)
        raise TensorFormatError(
            f"unsupported tensor dtype {name}; expected DTYPE_UINT8, DTYPE_FLOAT32 or DTYPE_FLOAT16"
        ) from None


def to_proto(array: np.ndarray) -> pb.Tensor:
    """Encode an array (uint8, float16 or float32) as a Tensor message."""
    kind = np.dtype(array.dtype).name
    if kind not in _DTYPE_BY_KIND:
        raise TensorFormatError(f"unsupported array dtype {kind}; expected uint8, float16 or float32")
    dtype = _DTYPE_BY_KIND[kind]
    data = np.ascontiguousarray(array, dtype=_NUMPY_BY_DTYPE[dtype]).tobytes()
    return pb.Tensor(dtype=dtype, shape=list(array.shape), data=data)


def from_proto(tensor: pb.Tensor) -> np.ndarray:
    """Decode a Tensor message; raises TensorFormatError when shape and bytes disagree."""
    dtype = numpy_dtype(tensor.dtype)
    shape = tuple(int(d) for d in tensor.shape)
    if any(d < 0 for d in shape):
        raise TensorFormatError(f"tensor shape {list(shape)} has a negative dimension")
    count = 1
    for d in shape:
        count *= d
    expected = count * dtype.itemsize
    if len(tensor.data) != expected:
        raise TensorFormatError(
            f"tensor of shape {list(shape)} and dtype {dtype.name} needs {expected} bytes, got {len(tensor.data)}"
        )
    return np.frombuffer(tensor.data, dtype=dtype).reshape(shape)
