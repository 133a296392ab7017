"""Every hostile or odd request gets its documented status, over real gRPC, while eight
well-behaved clients keep getting correct answers; generated requests never cause INTERNAL."""

from __future__ import annotations

import shutil

import grpc
import numpy as np
import pytest
from featurizer_client.tensors import from_proto, to_proto
from featurizer_client.v1 import featurizer_pb2 as pb
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.support.bad_inputs import SERVER_SETTINGS, corpus, leaks, publish_corpus_registry
from tests.support.images import encode, photos
from tests.support.reference import reference_features, torchvision_alexnet
from tests.support.servers import health_status, running_server
from tests.support.traffic import running_traffic

TOLERANCE = 1e-4
GOOD_CLIENTS = 8
RESPONSES = {"Embed": pb.EmbedResponse, "Predict": pb.PredictResponse, "GetModel": pb.ModelInfo}
DOCUMENTED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
              grpc.StatusCode.FAILED_PRECONDITION}


@pytest.fixture(scope="module")
def corpus_server(demo_registry_template, tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus") / "registry"
    shutil.copytree(demo_registry_template, root)  # the session's demo AlexNet, written once
    publish_corpus_registry(root)
    with running_server(root, **SERVER_SETTINGS) as server:
        server.root = root
        yield server


def call_raw(channel: grpc.Channel, method: str, request: bytes, timeout: float = 60):
    """Send already-serialised bytes (so a test can send what no protobuf library would)."""
    stub = channel.unary_unary(f"/featurizer.v1.Featurizer/{method}", request_serializer=lambda b: b,
                               response_deserializer=RESPONSES[method].FromString)
    try:
        return grpc.StatusCode.OK, "", stub(request, timeout=timeout)
    except grpc.RpcError as error:
        return error.code(), error.details() or "", None


def good_requests() -> list:
    """Half the callers ask AlexNet for features, half LargeNet for predictions; distinct images."""
    images = [pb.Image(tensor=to_proto(photos()["coffee"][i * 8: i * 8 + 48, :64].copy())) for i in range(GOOD_CLIENTS)]
    return [pb.EmbedRequest(model="alexnet", images=[im]) if i % 2 else pb.PredictRequest(model="largenet", images=[im])
            for i, im in enumerate(images)]


def test_every_case_gets_its_documented_outcome_while_good_clients_see_no_errors(corpus_server):
    reference_model = torchvision_alexnet()
    cases = corpus()
    assert len(cases) >= 25
    wrong = []
    with running_traffic(corpus_server.target, good_requests(), GOOD_CLIENTS) as clients, \
            grpc.insecure_channel(corpus_server.target) as channel:
        for case in cases:
            code, details, response = call_raw(channel, case.method, case.request)
            if code != case.code or case.message not in details:
                wrong.append(f"{case.name}: expected {case.code.name} ~ {case.message!r}, got {code.name}: {details!r}")
            if leaks(details, corpus_server.root):
                wrong.append(f"{case.name}: message leaks server internals: {details!r}")
            if case.reference is not None and response is not None:
                row = from_proto(response.embeddings)[0]
                gap = np.abs(row - reference_features(reference_model, case.reference)).max()
                if not gap <= TOLERANCE:
                    wrong.append(f"{case.name}: row differs from the reference by {gap}")
        assert clients.wait_for_more()  # every good client was answered after the corpus, too
    assert not wrong, "\n".join(wrong)
    print(f"\ncorpus: {len(cases)} cases as documented; {GOOD_CLIENTS} good clients made {sum(clients.calls)} "
          f"calls meanwhile (min {min(clients.calls)} per client), {len(clients.errors)} errors")
    assert clients.errors == []
    assert min(clients.calls) > 0, clients.calls  # every good client was served meanwhile
    assert corpus_server.sample("featurizer_requests_total", method="Embed", model="", code="INTERNAL") == 0
    assert health_status(corpus_server.target) == health_pb2.HealthCheckResponse.SERVING


# ----- property-based: generated requests --------------------------------------------------
def _valid_image_bytes() -> list[bytes]:
    photo = photos()["chelsea"][:40, :40]
    jpeg = encode(photo, "JPEG")
    return [jpeg, encode(photo, "PNG"), encode(photo, "GIF"), jpeg[:200]]


_tensors = st.builds(
    lambda dtype, shape, data: pb.Image(tensor=pb.Tensor(dtype=dtype, shape=shape, data=data)),
    st.integers(-1, 5), st.lists(st.integers(-3, 300), max_size=4), st.binary(max_size=2048))
_arrays = st.builds(lambda h, w, seed: pb.Image(tensor=to_proto(np.random.default_rng(seed).integers(
    0, 256, (h, w, 3), dtype=np.uint8))), st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**16))
_images = st.one_of(
    st.binary(max_size=256).map(lambda b: pb.Image(encoded=b)),
    st.sampled_from(_valid_image_bytes()).map(lambda b: pb.Image(encoded=b)),
    _tensors, _arrays, st.just(pb.Image()))
_models = st.one_of(st.sampled_from(["alexnet", "largenet", "alexnet-pool5", "loop-a", "", "nope", "../alexnet"]),
                    st.text(max_size=20))
_versions = st.one_of(st.sampled_from([0, 1, 2, -1, 10**12]), st.integers(-2**63, 2**63 - 1))
_options = st.builds(pb.EmbedOptions, layer=st.one_of(st.sampled_from(["", "conv1", "pool5", "7", "99"]), st.text(max_size=8)),
                     pooling=st.integers(-1, 6), normalize=st.booleans(), output_dtype=st.integers(-1, 5))
_requests = st.one_of(
    st.builds(lambda m, v, i, o: ("Embed", pb.EmbedRequest(model=m, version=v, images=i, options=o)),
              _models, _versions, st.lists(_images, max_size=4), _options),
    st.builds(lambda m, v, i, k, f, o: ("Predict", pb.PredictRequest(model=m, version=v, images=i, top_k=k,
                                                                      include_features=f, feature_options=o)),
              _models, _versions, st.lists(_images, max_size=4), st.integers(-10, 2**31 - 1), st.booleans(), _options))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=_requests)
def test_generated_requests_get_documented_codes_never_internal(corpus_server, request):
    method, message = request
    with grpc.insecure_channel(corpus_server.target) as channel:
        code, details, _ = call_raw(channel, method, message.SerializeToString())
    assert code in DOCUMENTED, f"{method}({message!r:.300}) -> {code.name}: {details}"
    assert not leaks(details, corpus_server.root)


def test_server_still_serves_after_generated_requests(corpus_server):
    assert health_status(corpus_server.target) == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(corpus_server.target) as channel:
        code, _, response = call_raw(channel, "Embed", pb.EmbedRequest(
            model="alexnet", images=[pb.Image(encoded=_valid_image_bytes()[1])]).SerializeToString())
    assert code == grpc.StatusCode.OK and from_proto(response.embeddings).shape == (1, 9216)


def test_an_undecodable_stream_message_ends_its_stream_with_invalid_argument(corpus_server):
    image = pb.Image(encoded=_valid_image_bytes()[1])
    message = pb.EmbedStreamRequest(id="x", request=pb.EmbedRequest(model="largenet", images=[image])).SerializeToString()
    bad = message.replace(b"largenet", b"la\xffgenet")
    with grpc.insecure_channel(corpus_server.target) as channel:
        stream = channel.stream_stream("/featurizer.v1.Featurizer/EmbedStream", request_serializer=lambda b: b,
                                       response_deserializer=pb.EmbedStreamResponse.FromString)
        answers = stream(iter([message, bad, message]), timeout=60)
        assert next(answers).WhichOneof("result") == "response"  # the item before it was answered
        with pytest.raises(grpc.RpcError) as error:
            list(answers)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request.model: not valid UTF-8" in error.value.details()
