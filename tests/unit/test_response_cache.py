"""The response cache alone: LRU order, the byte bound, evictions, drop(version), and keys that
never meet across versions, outputs, decode modes or inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featurizer.architectures import Pooling
from featurizer.inference.cache import ENTRY_OVERHEAD, CacheKey, ResponseCache, digest
from featurizer.inference.runner import FeatureOutput, HeadOutput
from featurizer.registry.manifest import DecodeMode

ROW_FLOATS = 256  # 1 KiB of float32 per row
ENTRY = ROW_FLOATS * 4 + ENTRY_OVERHEAD
OUTPUTS = (FeatureOutput(None, Pooling.AVG),)


class Version:
    """Stands for a ModelVersion: compared by identity, weakly referenceable."""


class Recorder:
    """A CacheObserver that remembers what it was told."""

    def __init__(self) -> None:
        self.evicted = 0
        self.size = (0, 0)

    def on_evict(self, count: int) -> None:
        self.evicted += count

    def on_size(self, size_bytes: int, entries: int) -> None:
        self.size = (size_bytes, entries)


def key(version: Version, name: str, outputs: tuple = OUTPUTS, decode: DecodeMode = DecodeMode.EXACT,
        backbone: Version | None = None) -> CacheKey:
    return CacheKey(version, backbone or version, outputs, decode, digest(name.encode()))


def row(value: float) -> tuple[torch.Tensor, ...]:
    return (torch.full((ROW_FLOATS,), float(value), dtype=torch.float32),)


def test_least_recently_used_goes_first_and_a_get_refreshes():
    recorder = Recorder()
    cache = ResponseCache(3 * ENTRY, recorder)
    v = Version()
    for i, name in enumerate("abc"):
        assert cache.put(key(v, name), row(i))
    assert cache.get(key(v, "a")) is not None  # "a" is now the most recent; "b" the least
    assert cache.put(key(v, "d"), row(3))
    assert cache.get(key(v, "b")) is None
    assert [cache.get(key(v, n))[0][0].item() for n in "acd"] == [0, 2, 3]
    assert recorder.evicted == 1 and recorder.size == (3 * ENTRY, 3)
    assert cache.size_bytes == 3 * ENTRY and len(cache) == 3


def test_byte_bound_holds_over_many_entries_and_evictions_are_counted():
    recorder = Recorder()
    cache = ResponseCache(10 * ENTRY + ENTRY // 2, recorder)  # room for 10 entries, not 11
    v = Version()
    for i in range(100):
        cache.put(key(v, f"image-{i}"), row(i))
        assert cache.size_bytes <= cache.max_bytes
    assert len(cache) == 10 and recorder.evicted == 90
    assert cache.get(key(v, "image-89")) is None and cache.get(key(v, "image-90")) is not None


def test_an_entry_larger_than_the_bound_is_not_stored_and_evicts_nothing():
    recorder = Recorder()
    cache = ResponseCache(2 * ENTRY, recorder)
    v = Version()
    cache.put(key(v, "small"), row(1))
    assert not cache.put(key(v, "huge"), (torch.zeros(ROW_FLOATS * 3),))  # 3 KiB + overhead > the bound
    assert cache.get(key(v, "huge")) is None and cache.get(key(v, "small")) is not None
    assert recorder.evicted == 0 and len(cache) == 1


def test_stored_rows_are_contiguous_copies_not_views_of_the_batch():
    cache = ResponseCache(10 * ENTRY)
    batch = torch.arange(4 * ROW_FLOATS, dtype=torch.float32).reshape(ROW_FLOATS, 4)
    column = batch[:, 1]  # a strided view into a larger tensor, as a batch's row can be
    v = Version()
    cache.put(key(v, "a"), (column,))
    (stored_row,) = cache.get(key(v, "a"))
    batch.zero_()
    assert stored_row.is_contiguous() and stored_row.untyped_storage().nbytes() == ROW_FLOATS * 4
    assert torch.equal(stored_row, torch.arange(1, 4 * ROW_FLOATS, 4, dtype=torch.float32))
    assert cache.size_bytes == ENTRY


def test_drop_forgets_a_version_as_model_and_as_backbone_and_refuses_later_rows():
    recorder = Recorder()
    cache = ResponseCache(100 * ENTRY, recorder)
    backbone, head, other = Version(), Version(), Version()
    cache.put(key(backbone, "a"), row(1))
    cache.put(key(head, "a", backbone=backbone), row(2))
    cache.put(key(other, "a"), row(3))
    assert cache.drop(backbone) == 2
    assert cache.get(key(backbone, "a")) is None and cache.get(key(head, "a", backbone=backbone)) is None
    assert cache.get(key(other, "a")) is not None
    assert recorder.size == (ENTRY, 1)
    assert not cache.put(key(backbone, "b"), row(4))  # a call in flight at unload stores nothing
    assert not cache.put(key(head, "b", backbone=backbone), row(5))
    assert cache.drop(head) == 0 and len(cache) == 1


def test_keys_never_meet_across_versions_outputs_decode_modes_or_inputs():
    cache = ResponseCache(100 * ENTRY)
    v1, v2 = Version(), Version()
    head_a, head_b = HeadOutput("h@1", torch.nn.Identity()), HeadOutput("h@1", torch.nn.Identity())
    keys = [
        key(v1, "a"),
        key(v2, "a"),                                                 # same bytes, another version object
        key(v1, "a", backbone=v2),                                    # another backbone
        key(v1, "a", outputs=(FeatureOutput(None, Pooling.MAX),)),    # another pooling
        key(v1, "a", outputs=(FeatureOutput(3, Pooling.AVG),)),       # another layer
        key(v1, "a", outputs=OUTPUTS + (FeatureOutput(3, Pooling.AVG),)),
        key(v1, "a", outputs=(head_a,)),
        key(v1, "a", outputs=(head_b,)),                              # equal fields, another head object
        key(v1, "a", decode=DecodeMode.FAST),
        key(v1, "b"),
    ]
    for i, k in enumerate(keys):
        assert cache.get(k) is None, i
        cache.put(k, row(i))
    assert [cache.get(k)[0][0].item() for k in keys] == list(range(len(keys)))
    assert cache.get(key(v1, "a", outputs=(FeatureOutput(None, Pooling.AVG),))) is not None  # equal by value


def test_digest_separates_bytes_from_tensors_and_tensors_by_dtype_and_shape():
    pixels = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    digests = {digest(pixels.tobytes()), digest(pixels), digest(pixels.reshape(4, 2, 3)),
               digest(pixels.view(np.int8)), digest(pixels.astype(np.float32))}
    assert len(digests) == 5
    assert digest(pixels) == digest(pixels.copy()) == digest(np.ascontiguousarray(pixels[::1]))
    strided = np.arange(48, dtype=np.uint8).reshape(2, 8, 3)[:, ::2]  # not contiguous: its values count
    assert digest(strided) == digest(np.ascontiguousarray(strided))


def test_a_bound_of_zero_is_refused():
    with pytest.raises(ValueError, match="max_bytes"):
        ResponseCache(0)
