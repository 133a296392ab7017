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
_DTYPE_BY_KIND: dict[str, pb.DType] = {"uint8": pb.DTYPE_UINT8, "float32": pb.DTYPE_FLOAT32, "float16": pb.DTYPE_FLOAT16}
# A shape is checked before numpy sees it: numpy refuses a zero-size array whose other dimensions
# multiply past its index range (``[2**62, 2**62, 0]``) with a bare ValueError. Images are rank 3
# and feature maps rank 4; no axis of anything this API sends reaches 2**31.
MAX_RANK = 8
MAX_DIMENSION = 2**31 - 1


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
    """Decode a Tensor message; raises TensorFormatError when shape and bytes disagree or the
    shape is out of bounds (rank above MAX_RANK, a dimension above MAX_DIMENSION)."""
    dtype = numpy_dtype(tensor.dtype)
    shape = tuple(int(d) for d in tensor.shape)
    _check_shape(shape)
    count = 1
    for d in shape:
        count *= d
    expected = count * dtype.itemsize
    if len(tensor.data) != expected:
        raise TensorFormatError(
            f"tensor of shape {list(shape)} and dtype {dtype.name} needs {expected} bytes, got {len(tensor.data)}"
        )
    try:
        return np.frombuffer(tensor.data, dtype=dtype).reshape(shape)
    except ValueError:  # a zero-size shape whose other dimensions multiply past numpy's index range
        raise TensorFormatError(f"tensor shape {list(shape)} is too large: its non-zero dimensions "
                                f"multiply past what an array can index") from None


def _check_shape(shape: tuple[int, ...]) -> None:
    if len(shape) > MAX_RANK:
        raise TensorFormatError(f"tensor shape {_shown(shape)} has {len(shape)} dimensions; at most {MAX_RANK} allowed")
    if any(d < 0 for d in shape):
        raise TensorFormatError(f"tensor shape {list(shape)} has a negative dimension")
    if any(d > MAX_DIMENSION for d in shape):
        raise TensorFormatError(f"tensor shape {list(shape)} has a dimension above the limit of {MAX_DIMENSION}")


def _shown(shape: tuple[int, ...]) -> str:
    return str(list(shape)) if len(shape) <= 2 * MAX_RANK else f"[{', '.join(map(str, shape[:MAX_RANK]))}, ...]"
