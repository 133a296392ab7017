"""The response cache (--cache-bytes) over real gRPC: a repeated image is answered from memory
(no decoding, no forward pass: the servers' own metrics show it), with the rows a cache-off server
computes; rows never cross versions, options or inputs; errors still name the caller's index.

Both module servers run with ``max_batch_size=1``: every row then comes from a forward pass of one
image on both, whichever request computed it, so rows compare bitwise (a batch of another size may
round differently on the device)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from featurizer_client.tensors import from_proto
from featurizer_client.v1 import featurizer_pb2 as pb

from featurizer.inference.cache import ENTRY_OVERHEAD
from featurizer.inference.engine import INLINE_DIGEST_BYTES
from featurizer.inference.requests import EmbedOptions
from featurizer.registry.manifest import DecodeMode
from tests.support.images import encode, photos
from tests.support.reference import reference_features, torchvision_alexnet
from tests.support.registries import publish_alexnet, publish_feature_head, publish_largenet
from tests.support.rpc import featurizer_stub, tensor_images
from tests.support.servers import ServerThread, running_server

CACHE_BYTES = 64 << 20
FLATTEN_ENTRY = 9216 * 4 + ENTRY_OVERHEAD  # AlexNet pool5 flattened, float32
AVG_ENTRY = 256 * 4 + ENTRY_OVERHEAD       # pool5 averaged
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def registry(demo_registry_template, tmp_path_factory):
    root = tmp_path_factory.mktemp("cache") / "registry"
    shutil.copytree(demo_registry_template, root)
    publish_feature_head(root, "objects", labels=("cat", "cup", "rocket"), seed=3)
    publish_largenet(root, "largenet10", num_classes=10, labels=tuple(f"c{i}" for i in range(10)), seed=4)
    return root


@pytest.fixture(scope="module")
def cached(registry) -> Iterator[ServerThread]:
    with running_server(registry, cache_bytes=CACHE_BYTES, max_batch_size=1) as server:
        yield server


@pytest.fixture(scope="module")
def plain(registry) -> Iterator[ServerThread]:
    """The same registry with no cache: what every cached answer must equal."""
    with running_server(registry, max_batch_size=1) as server:
        yield server


def jpeg(name: str, crop: int = 0) -> bytes:
    """A real photo as a JPEG; ``crop`` > 0 trims that many pixels off each side (another image)."""
    image = photos()[name]
    return encode(image[crop: image.shape[0] - crop, crop: image.shape[1] - crop])


def embed(server: ServerThread, model: str, images: list[bytes], *, version: int = 0, **options) -> np.ndarray:
    request = pb.EmbedRequest(model=model, version=version, images=[pb.Image(encoded=d) for d in images],
                              options=pb.EmbedOptions(**options))
    with featurizer_stub(server.target) as stub:
        return from_proto(stub.Embed(request, timeout=60).embeddings)


def predict(server: ServerThread, model: str, images: list[bytes], **fields) -> pb.PredictResponse:
    request = pb.PredictRequest(model=model, images=[pb.Image(encoded=d) for d in images], **fields)
    with featurizer_stub(server.target) as stub:
        return stub.Predict(request, timeout=60)


class Work:
    """What a server did between two snapshots: cache hits and misses, forward passes (one per image
    at max_batch_size 1, warm-up excluded by taking differences) and requests that decoded."""

    NAMES = {"hits": "featurizer_cache_hits_total", "misses": "featurizer_cache_misses_total",
             "forwards": "featurizer_batch_size_count", "decoding": "featurizer_preprocess_seconds_count"}

    def __init__(self, server: ServerThread) -> None:
        self.server = server
        self.start = self._read()

    def _read(self) -> dict[str, float]:
        return {key: self.server.sample(name) for key, name in self.NAMES.items()}

    def done(self) -> dict[str, float]:
        now = self._read()
        return {key: now[key] - self.start[key] for key in now}


def test_a_repeated_image_is_answered_without_decoding_or_inference(cached, plain):
    images = [jpeg("chelsea"), jpeg("rocket")]
    work = Work(cached)
    first = embed(cached, "alexnet", images)
    assert work.done() == {"hits": 0, "misses": 2, "forwards": 2, "decoding": 1}
    work = Work(cached)
    again = embed(cached, "alexnet", images)
    assert work.done() == {"hits": 2, "misses": 0, "forwards": 0, "decoding": 0}
    assert np.array_equal(again, first) and np.array_equal(again, embed(plain, "alexnet", images))
    model = torchvision_alexnet()
    for row, data in zip(again, images, strict=True):
        assert np.abs(row - reference_features(model, data)).max() <= TOLERANCE
    assert cached.sample("featurizer_cache_entries") >= 2
    assert plain.sample("featurizer_cache_entries") == 0 and plain.sample("featurizer_cache_misses_total") == 0


def test_a_request_of_more_than_a_mebibyte_is_hashed_on_a_thread_and_hits_alike(cached, plain):
    big = np.ascontiguousarray(np.resize(photos()["astronaut"], (700, 700, 3)))  # 1.47 MB of raw pixels
    assert big.nbytes > INLINE_DIGEST_BYTES
    request = pb.EmbedRequest(model="alexnet", images=tensor_images([big]))
    with featurizer_stub(cached.target) as stub:
        first = from_proto(stub.Embed(request, timeout=60).embeddings)
        work = Work(cached)
        again = from_proto(stub.Embed(request, timeout=60).embeddings)
    assert work.done() == {"hits": 1, "misses": 0, "forwards": 0, "decoding": 0}
    with featurizer_stub(plain.target) as stub:
        assert np.array_equal(again, first) and np.array_equal(again, from_proto(stub.Embed(request, timeout=60).embeddings))


def test_normalize_and_float16_apply_to_a_cached_row_as_to_a_computed_one(cached, plain):
    images = [jpeg("coffee")]
    embed(cached, "alexnet", images)
    for options in ({"normalize": True}, {"output_dtype": pb.DTYPE_FLOAT16},
                    {"normalize": True, "output_dtype": pb.DTYPE_FLOAT16}):
        work = Work(cached)
        rows = embed(cached, "alexnet", images, **options)
        assert work.done()["hits"] == 1 and work.done()["forwards"] == 0, options
        expected = embed(plain, "alexnet", images, **options)
        assert rows.dtype == expected.dtype and np.array_equal(rows, expected), options


def test_another_layer_pooling_or_decode_mode_is_a_miss_with_its_own_rows(cached, plain):
    images = [jpeg("astronaut")]
    embed(cached, "alexnet", images)
    for options in ({"pooling": pb.POOLING_AVG}, {"layer": "conv2", "pooling": pb.POOLING_AVG}):
        work = Work(cached)
        rows = embed(cached, "alexnet", images, **options)
        assert work.done()["misses"] == 1 and work.done()["forwards"] == 1, options
        assert np.array_equal(rows, embed(plain, "alexnet", images, **options)), options
    # The request's decode mode (Engine.embed(decode=...)), called on each server's own engine.
    fast = {s: s.call(s.server.engine.embed("alexnet", 0, images, EmbedOptions(), decode=DecodeMode.FAST)).array
            for s in (cached, plain)}
    work = Work(cached)
    again = cached.call(cached.server.engine.embed("alexnet", 0, images, EmbedOptions(), decode=DecodeMode.FAST))
    assert work.done()["hits"] == 1 and np.array_equal(again.array, fast[cached])
    assert np.array_equal(fast[cached], fast[plain])


def test_a_mixed_request_computes_only_its_new_images_and_keeps_their_order(cached, plain):
    a, b, c, d = jpeg("camera"), jpeg("chelsea", crop=10), jpeg("rocket", crop=10), jpeg("coffee", crop=10)
    embed(cached, "alexnet", [a, b])
    work = Work(cached)
    rows = embed(cached, "alexnet", [c, a, d, b])
    assert work.done() == {"hits": 2, "misses": 2, "forwards": 2, "decoding": 1}
    assert np.array_equal(rows, embed(plain, "alexnet", [c, a, d, b]))


def test_a_bad_image_among_cached_ones_is_named_by_its_index_in_the_request(cached):
    a, b = jpeg("camera", crop=20), jpeg("astronaut", crop=20)
    embed(cached, "alexnet", [a, b])
    for bad in (b"\xff\xd8\xffnot a jpeg",        # small: refused from its header, before admission
                jpeg("coffee", crop=20)[:30_000]):  # large and truncated: refused while decoding on the pool
        with featurizer_stub(cached.target) as stub, pytest.raises(grpc.RpcError) as refused:
            stub.Embed(pb.EmbedRequest(model="alexnet", images=[pb.Image(encoded=x) for x in (a, b, a, bad)]),
                       timeout=60)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "images[3]" in refused.value.details() and "images[0]" not in refused.value.details()


def test_predict_with_a_head_or_a_classifier_and_the_streams_use_the_cache(cached, plain):
    photo = jpeg("rocket", crop=30)
    fields = {"include_features": True, "feature_options": pb.EmbedOptions(pooling=pb.POOLING_AVG), "top_k": 3}
    first = predict(cached, "objects", [photo], **fields)
    work = Work(cached)
    again = predict(cached, "objects", [photo], **fields)
    assert work.done() == {"hits": 1, "misses": 0, "forwards": 0, "decoding": 0}
    assert again == first == predict(plain, "objects", [photo], **fields)
    assert cached.sample("featurizer_cache_hits_total", model="objects") >= 1

    small = encode(photos()["chelsea"][100:164, 200:264], "PNG")  # a 64x64 image for the 32x32 LargeNet
    first = predict(cached, "largenet10", [small], top_k=10)
    work = Work(cached)
    assert predict(cached, "largenet10", [small], top_k=10) == first == predict(plain, "largenet10", [small], top_k=10)
    assert work.done()["hits"] == 1 and work.done()["forwards"] == 0

    streamed = jpeg("coffee", crop=30)
    embed(cached, "alexnet", [streamed])
    work = Work(cached)  # every item of both streams was answered by the calls above
    with featurizer_stub(cached.target) as stub:
        embeds = list(stub.EmbedStream(iter([pb.EmbedStreamRequest(id=f"e{i}", request=pb.EmbedRequest(
            model="alexnet", images=[pb.Image(encoded=streamed)])) for i in range(4)]), timeout=60))
        predicts = list(stub.PredictStream(iter([pb.PredictStreamRequest(id=f"p{i}", request=pb.PredictRequest(
            model="objects", images=[pb.Image(encoded=photo)], **fields)) for i in range(4)]), timeout=60))
    assert work.done() == {"hits": 8, "misses": 0, "forwards": 0, "decoding": 0}
    expected = embed(plain, "alexnet", [streamed])
    assert all(np.array_equal(from_proto(e.response.embeddings), expected) for e in embeds)
    assert all(p.response == again for p in predicts)


def _replace_version(root, model: str, version: int, seed: int, scratch) -> None:
    """Publish ``model@version`` again with other weights: the old directory out, the new one renamed in."""
    publish_alexnet(scratch, model, seed=seed, version=version)
    (root / model / str(version)).rename(scratch / f"old-{version}")
    (scratch / model / str(version)).rename(root / model / str(version))


def test_rows_never_cross_versions_and_an_unloaded_version_takes_its_rows_along(tmp_path):
    root, scratch = tmp_path / "registry", tmp_path / "scratch"
    publish_alexnet(root, "alexnet", seed=0)
    images = [jpeg("chelsea")]
    refs = {seed: reference_features(torchvision_alexnet(seed), images[0]) for seed in (0, 1, 2)}
    with running_server(root, cache_bytes=CACHE_BYTES) as cached:
        v1 = embed(cached, "alexnet", images)
        assert np.abs(v1[0] - refs[0]).max() <= TOLERANCE
        publish_alexnet(root, "alexnet", seed=1)
        cached.reload()
        work = Work(cached)
        v2 = embed(cached, "alexnet", images)  # the default version is now 2: its own rows
        pinned = embed(cached, "alexnet", images, version=1)
        assert work.done() == {"hits": 1, "misses": 1, "forwards": 1, "decoding": 1}
        assert np.abs(v2[0] - refs[1]).max() <= TOLERANCE and np.array_equal(pinned, v1)
        with running_server(root) as plain:
            assert np.array_equal(embed(plain, "alexnet", images), v2)
            assert np.array_equal(embed(plain, "alexnet", images, version=1), v1)
            assert cached.sample("featurizer_cache_entries") == 2

            _replace_version(root, "alexnet", 1, seed=2, scratch=scratch)  # same number, other weights
            cached.reload()
            plain.reload()
            assert cached.sample("featurizer_cache_entries") == 1  # the replaced version's row went with it
            work = Work(cached)
            republished = embed(cached, "alexnet", images, version=1)
            assert work.done()["misses"] == 1 and np.abs(republished[0] - refs[2]).max() <= TOLERANCE
            assert np.array_equal(republished, embed(plain, "alexnet", images, version=1))

        (root / "alexnet" / "2").rename(scratch / "removed-2")
        cached.reload()
        assert cached.sample("featurizer_cache_entries") == 1
        assert cached.sample("featurizer_cache_bytes") == FLATTEN_ENTRY
        work = Work(cached)
        assert np.array_equal(embed(cached, "alexnet", images), republished)  # default = version 1 again: a hit
        assert work.done()["hits"] == 1


def test_the_byte_bound_holds_over_many_images_and_evictions_are_counted(demo_registry_template):
    bound = 10 * AVG_ENTRY + AVG_ENTRY // 2  # room for 10 averaged rows, not 11
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(30)]  # raw tensors, not files
    with running_server(demo_registry_template, cache_bytes=bound) as server, featurizer_stub(server.target) as stub:
        def embed_pixels(arrays: list[np.ndarray]) -> np.ndarray:
            request = pb.EmbedRequest(model="alexnet", images=tensor_images(arrays),
                                      options=pb.EmbedOptions(pooling=pb.POOLING_AVG))
            return from_proto(stub.Embed(request, timeout=60).embeddings)

        rows = {}
        for start in range(0, 30, 10):
            for i, row in enumerate(embed_pixels(pixels[start: start + 10])):
                rows[start + i] = row
            assert 0 < server.sample("featurizer_cache_bytes") <= bound
        assert server.sample("featurizer_cache_entries") == 10
        assert server.sample("featurizer_cache_bytes") == 10 * AVG_ENTRY
        assert server.sample("featurizer_cache_evictions_total") == 20
        work = Work(server)
        assert np.array_equal(embed_pixels(pixels[20:]), np.stack([rows[i] for i in range(20, 30)]))
        assert work.done()["hits"] == 10
        embed_pixels(pixels[:1])  # evicted long ago: computed again, and one more eviction
        assert server.sample("featurizer_cache_misses_total") == 31
        assert server.sample("featurizer_cache_evictions_total") == 21
