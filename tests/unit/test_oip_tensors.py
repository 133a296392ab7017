"""The v2 tensor codecs: BYTES length prefixes, raw buffers and JSON data, and what they refuse."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from featurizer.inference.errors import InvalidArgument
from featurizer.rpc.oip import tensors


@given(st.lists(st.binary(max_size=40), max_size=12))
def test_bytes_elements_round_trip(items):
    buffer = tensors.serialize_bytes(items)
    assert tensors.deserialize_bytes(buffer, len(items), "t") == items
    assert tensors.from_raw("t", "BYTES", [len(items)], buffer, "t").data == items


@pytest.mark.parametrize("buffer, count, fragment", [
    (b"\x05\x00\x00\x00abc", 1, "claims 5 bytes but only 3 remain"),
    (b"\x01\x00\x00\x00a\x02\x00", 2, "ends inside an element's 4-byte length prefix"),
    (b"\x01\x00\x00\x00a", 2, "holds 1 elements; the shape needs 2"),
])
def test_malformed_bytes_name_the_problem(buffer, count, fragment):
    with pytest.raises(InvalidArgument, match=fragment):
        tensors.deserialize_bytes(buffer, count, "input 'images'")


def test_raw_numeric_buffers_must_fill_the_shape():
    array = np.arange(6, dtype="<f4").reshape(2, 3)
    decoded = tensors.from_raw("x", "FP32", [2, 3], tensors.to_raw(array), "x")
    np.testing.assert_array_equal(decoded.data, array)
    with pytest.raises(InvalidArgument, match="needs 24 bytes, got 20"):
        tensors.from_raw("x", "FP32", [2, 3], tensors.to_raw(array)[:20], "x")
    with pytest.raises(InvalidArgument, match="unknown datatype 'FLOAT'"):
        tensors.from_raw("x", "FLOAT", [2, 3], b"", "x")
    with pytest.raises(InvalidArgument, match="negative dimension"):
        tensors.from_raw("x", "FP32", [-2, 3], b"", "x")
    with pytest.raises(InvalidArgument, match="more than"):
        tensors.from_raw("x", "UINT8", [2**20, 2**20, 2**20], b"", "x")


def test_json_data_nested_or_flat_and_refused_values():
    nested = tensors.from_json("p", "UINT8", [1, 2, 2], [[[1, 2], [3, 4]]], "p")
    flat = tensors.from_json("p", "UINT8", [1, 2, 2], [1, 2, 3, 4], "p")
    np.testing.assert_array_equal(nested.data, flat.data)
    assert nested.data.dtype == np.uint8
    assert tensors.from_json("s", "BYTES", [2], ["a", "é"], "s").data == [b"a", "é".encode()]
    for datatype, data, fragment in (("UINT8", [256], "integers in 0..255"), ("INT32", [1.5], "integers in"),
                                     ("FP32", ["x"], "must be numbers"), ("BYTES", [1], "must be strings"),
                                     ("FP32", {"a": 1}, "must be a JSON array")):
        with pytest.raises(InvalidArgument, match=fragment):
            tensors.from_json("t", datatype, [1], data, "t")
