"""Input handling over real gRPC against a real server on 127.0.0.1: each
defect reproduced on the old code gets its documented status now.

- a zero-size tensor with huge dimensions: INVALID_ARGUMENT naming the shape (was INTERNAL);
- native-size images of two sizes with pooling none/flatten: INVALID_ARGUMENT before the forward
  pass (was INTERNAL from np.stack after it);
- a dark 16-bit PNG embeds as the dark image it is (was scaled up to the bright one);
- finite inputs that overflow to NaN: INVALID_ARGUMENT naming the image, unary and per stream item
  (was OK with NaNs);
- a progressive JPEG with thousands of repeated scans: refused from its markers, not decoded;
- overload refusals decode nothing (images were decoded before the queue was checked).
"""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
from featurizer_client.tensors import from_proto, to_proto
from featurizer_client.v1 import featurizer_pb2 as pb
from featurizer_client.v1 import featurizer_pb2_grpc as pb_grpc
from PIL import Image

from featurizer.inference.preprocessing import MAX_JPEG_SCANS
from tests.support.images import encode, photos
from tests.support.registries import NATIVE, publish_alexnet, publish_largenet
from tests.support.servers import running_server
from tests.support.test_builders import GATES, Gate, publish_test_model
from tests.support.observers import DepthWatcher

MAX_QUEUE = 8
WAIT = 120  # seconds: only a bound against hangs, never a measure
TOLERANCE = 1e-4
GATE = "input-defects"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("input-defects-registry")
    publish_alexnet(root, "alexnet")                       # 224x224 resize_crop, pool5 flatten
    publish_alexnet(root, "native", input=NATIVE)          # images at their own size
    publish_largenet(root, "largenet")                     # a classifier for Predict
    publish_test_model(root, "gated", "test_gated", {"gate": GATE})
    with running_server(root, max_queue=MAX_QUEUE, max_batch_size=1, max_delay_ms=0) as handle:
        yield handle
    GATES.pop(GATE, None)


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.FeaturizerStub(channel)


def call(method, request, timeout: float = WAIT):
    """(code, details, response) of a unary call."""
    try:
        return grpc.StatusCode.OK, "", method(request, timeout=timeout)
    except grpc.RpcError as error:
        return error.code(), error.details() or "", None


def pixels(height: int = 64, width: int = 64, seed: int = 0) -> pb.Image:
    return pb.Image(tensor=to_proto(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)))


def float_image(value: float, side: int) -> pb.Image:
    return pb.Image(tensor=to_proto(np.full((3, side, side), value, np.float32)))


def overflowing(side: int) -> pb.Image:
    """Finite float32 values of +-3e38 (random signs): sums inside the model overflow to inf - inf."""
    signs = np.sign(np.random.default_rng(0).standard_normal((3, side, side)))
    return pb.Image(tensor=to_proto((signs * 3e38).astype(np.float32)))


# ----- 1 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, shape", [(pb.DTYPE_UINT8, [2**62, 2**62, 0]), (pb.DTYPE_FLOAT32, [3, 2**62, 0])])
def test_a_zero_size_tensor_with_huge_dimensions_is_invalid_argument_naming_the_shape(stub, dtype, shape):
    image = pb.Image(tensor=pb.Tensor(dtype=dtype, shape=shape, data=b""))
    code, details, _ = call(stub.Embed, pb.EmbedRequest(model="alexnet", images=[image]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith(f"images[0].tensor: tensor shape [{shape[0]}, {shape[1]}, 0]"), details
    assert "above the limit" in details


# ----- 2 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("pooling", [pb.POOLING_NONE, pb.POOLING_FLATTEN, pb.POOLING_DEFAULT])
def test_native_images_of_two_sizes_with_a_spatial_pooling_are_refused_before_the_forward_pass(server, stub, pooling):
    runner = server.server.manager.versions[("native", 1)].runner
    before = runner.forward_passes
    request = pb.EmbedRequest(model="native", images=[pixels(64, 64), pixels(80, 96, seed=1)],
                              options=pb.EmbedOptions(pooling=pooling))
    code, details, _ = call(stub.Embed, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "images[0] is 64x64 and images[1] is 96x80" in details
    assert "input mode native" in details and "use pooling avg or max, or send images of one size" in details
    assert runner.forward_passes == before  # refused before any work on the device


def test_native_images_of_two_sizes_with_avg_pooling_get_each_their_own_row(stub):
    images = [pixels(64, 64), pixels(80, 96, seed=1)]
    options = pb.EmbedOptions(pooling=pb.POOLING_AVG)
    both = from_proto(stub.Embed(pb.EmbedRequest(model="native", images=images, options=options), timeout=WAIT).embeddings)
    assert both.shape == (2, 256)
    for i, image in enumerate(images):
        alone = from_proto(stub.Embed(pb.EmbedRequest(model="native", images=[image], options=options),
                                      timeout=WAIT).embeddings)
        assert np.abs(both[i] - alone[0]).max() <= TOLERANCE


# ----- 3 ---------------------------------------------------------------------------------------
def test_a_dark_16_bit_png_embeds_as_the_dark_image_it_is(stub):
    grey = np.tile(np.arange(256, dtype=np.uint16)[::4], (64, 1))  # 64x64, samples 0..252
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, "PNG")  # 16-bit greyscale: samples 0..252 of 65535
    dark = np.repeat(np.rint(grey * 255 / 65535).astype(np.uint8)[:, :, None], 3, axis=2)
    bright = np.repeat(grey.astype(np.uint8)[:, :, None], 3, axis=2)  # what the old code made of it

    def row(image: pb.Image) -> np.ndarray:
        return from_proto(stub.Embed(pb.EmbedRequest(model="alexnet", images=[image]), timeout=WAIT).embeddings)[0]

    got = row(pb.Image(encoded=buffer.getvalue()))
    assert np.abs(got - row(pb.Image(tensor=to_proto(dark)))).max() <= TOLERANCE
    assert np.abs(got - row(pb.Image(tensor=to_proto(bright)))).max() > 100 * TOLERANCE


# ----- 4 ---------------------------------------------------------------------------------------
def test_finite_inputs_that_overflow_are_invalid_argument_naming_the_image_never_ok_with_nan(stub):
    request = pb.EmbedRequest(model="alexnet", images=[pixels(), float_image(3e38, 224)])
    code, details, _ = call(stub.Embed, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith("images[1]: the model's output for this image is not finite (NaN or Inf)"), details
    code, details, _ = call(stub.Predict, pb.PredictRequest(model="largenet", images=[overflowing(32)]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("images[0]: "), details
    assert "not finite" in details


def test_features_past_the_float16_range_are_refused_for_float16_output(stub):
    image = float_image(1e7, 224)  # finite float32 features far above 65504
    row = from_proto(stub.Embed(pb.EmbedRequest(model="alexnet", images=[image]), timeout=WAIT).embeddings)
    assert np.isfinite(row).all() and np.abs(row).max() > 65504
    code, details, _ = call(stub.Embed, pb.EmbedRequest(model="alexnet", images=[pixels(), image],
                                                        options=pb.EmbedOptions(output_dtype=pb.DTYPE_FLOAT16)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith("images[1]: features exceed the float16 range") and "output_dtype float32" in details


def test_stream_items_that_overflow_get_an_item_error_and_the_stream_goes_on(stub):
    embeds = [pb.EmbedStreamRequest(id=f"e{i}", request=pb.EmbedRequest(model="alexnet", images=[image]))
              for i, image in enumerate([pixels(), float_image(3e38, 224), pixels(seed=2)])]
    answers = list(stub.EmbedStream(iter(embeds), timeout=WAIT))
    assert [a.WhichOneof("result") for a in answers] == ["response", "error", "response"]
    assert answers[1].error.code_name == "INVALID_ARGUMENT" and "images[0]: " in answers[1].error.message
    assert "not finite" in answers[1].error.message
    predicts = [pb.PredictStreamRequest(id=f"p{i}", request=pb.PredictRequest(model="largenet", images=[image]))
                for i, image in enumerate([overflowing(32), pixels(32, 32)])]
    answers = list(stub.PredictStream(iter(predicts), timeout=WAIT))
    assert [a.WhichOneof("result") for a in answers] == ["error", "response"]
    assert answers[0].error.code_name == "INVALID_ARGUMENT" and "not finite" in answers[0].error.message
    assert all(np.isfinite(c.probability) for c in answers[1].response.predictions[0].classes)


# ----- 5 ---------------------------------------------------------------------------------------
def many_scans_jpeg(side: int, repeats: int) -> bytes:
    """Pillow's progressive JPEG with its (empty) last scan repeated ``repeats`` more times: a small
    file that takes seconds of decoding per thousand scans."""
    data = encode(np.full((side, side, 3), 128, np.uint8), "JPEG", progressive=True)
    last = data.rfind(b"\xff\xda")  # the last scan, up to the EOI marker
    return data[:-2] + data[last:-2] * repeats + data[-2:]


def test_a_progressive_jpeg_with_thousands_of_scans_is_refused_not_decoded_and_others_are_served(stub):
    attack = many_scans_jpeg(2000, 3000)
    assert len(attack) < 1024 * 1024  # under every size limit: only its scans give it away
    attackers = [stub.Embed.future(pb.EmbedRequest(model="alexnet", images=[pb.Image(encoded=attack)]), timeout=WAIT)
                 for _ in range(2)]
    normal = stub.Embed.future(pb.EmbedRequest(model="alexnet", images=[pb.Image(encoded=encode(photos()["coffee"]))]),
                               timeout=WAIT)
    for future in attackers:
        error = future.exception(WAIT)
        assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == (f"images[0]: JPEG has more than {MAX_JPEG_SCANS} scans (the limit, to bound "
                                   f"decoding work); re-encode it")
    assert from_proto(normal.result(WAIT).embeddings).shape == (1, 9216)


# ----- 6 ---------------------------------------------------------------------------------------
def test_overload_refusals_are_decided_before_any_image_is_decoded(server, stub):
    """The gated model's forward pass is held; two 4-JPEG calls fill the queue (8); twenty more are
    refused. The preprocess histogram counts one observation per call whose images were prepared:
    the refused calls must add none (the old code decoded all 80 of their images first)."""
    jpegs = [pb.Image(encoded=encode(np.ascontiguousarray(photos()["rocket"][i:i + 200, i:i + 200]))) for i in range(4)]
    gate = GATES[GATE] = Gate()
    blocker = stub.Embed.future(pb.EmbedRequest(model="gated", images=[pixels(8, 8)]), timeout=WAIT)
    try:
        assert gate.entered.wait(WAIT)
        prepared = server.sample("featurizer_preprocess_seconds_count", model="gated")
        batcher = server.server.manager.versions[("gated", 1)].batcher
        watcher = batcher._observer = DepthWatcher(batcher._observer, MAX_QUEUE)
        try:
            admitted = [stub.Embed.future(pb.EmbedRequest(model="gated", images=jpegs), timeout=WAIT) for _ in range(2)]
            assert watcher.reached.wait(WAIT)  # both admitted calls' images are decoded and queued
        finally:
            batcher._observer = watcher.inner
        refused = [stub.Embed.future(pb.EmbedRequest(model="gated", images=jpegs), timeout=WAIT) for _ in range(20)]
        errors = [future.exception(WAIT) for future in refused]
        assert all(e is not None and e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in errors)
        assert server.sample("featurizer_preprocess_seconds_count", model="gated") - prepared == 2  # no decodes
        assert all(f"8 images queued, 0 being prepared, limit {MAX_QUEUE}" in e.details() for e in errors)
        assert gate.calls == 1  # still only the blocker has run
    finally:
        gate.release.set()
    assert blocker.result(WAIT).embeddings.shape == [1, 3]
    assert all(f.result(WAIT).embeddings.shape == [4, 3] for f in admitted)


def test_images_being_prepared_count_against_the_queue(server, stub):
    """A call whose images are still on the decode pool holds its room: a lone image is refused
    while a 4-image call decodes, even though nothing is queued yet."""
    gate = GATES[GATE] = Gate()
    blocker = stub.Embed.future(pb.EmbedRequest(model="gated", images=[pixels(8, 8)]), timeout=WAIT)
    try:
        assert gate.entered.wait(WAIT)
        batcher = server.server.manager.versions[("gated", 1)].batcher
        room = server.call(_admit(batcher, MAX_QUEUE - 1))  # as a call whose 7 images are being prepared
        try:
            jpeg = pb.Image(encoded=encode(np.ascontiguousarray(photos()["rocket"][:200, :200])))
            code, details, _ = call(stub.Embed, pb.EmbedRequest(model="gated", images=[jpeg, jpeg]))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"0 images queued, {MAX_QUEUE - 1} being prepared, limit {MAX_QUEUE}" in details
        finally:
            server.call(_release(room))
    finally:
        gate.release.set()
    assert blocker.result(WAIT).embeddings.shape == [1, 3]


async def _admit(batcher, count):
    return batcher.admit(count)


async def _release(admission):
    admission.release()
