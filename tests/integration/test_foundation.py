"""One real path, registry -> gRPC server -> batched AlexNet features -> numpy client."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from featurizer_client import FeaturizerClient, FeaturizerError
from tests.support.images import encode, encoded_photos, photos
from tests.support.reference import reference_features, torchvision_alexnet
from tests.support.servers import ServerThread, health_status

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference_model():
    return torchvision_alexnet()


def test_embeddings_of_real_photos_equal_torchvision(demo_server, reference_model):
    jpegs = encoded_photos("JPEG")
    names = list(jpegs)
    with FeaturizerClient(demo_server.target) as client:
        X = client.embed([jpegs[n] for n in names], model="alexnet")
    assert X.shape == (len(names), 9216) and X.dtype == np.float32
    for i, name in enumerate(names):  # row i belongs to image i
        expected = reference_features(reference_model, jpegs[name])
        assert np.abs(X[i] - expected).max() <= TOLERANCE, name
    assert np.abs(X[0] - X[1]).max() > 1e-3  # distinct photos give distinct rows


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "BMP", "GIF"])
def test_other_formats_and_raw_tensors_match(demo_server, reference_model, fmt):
    array = photos()["coffee"]
    if fmt == "GIF":  # palette-quantised: the reference must see the same pixels
        from PIL import Image
        import io
        array = np.asarray(Image.open(io.BytesIO(encode(array, "GIF"))).convert("RGB"))
    data = encode(array, fmt) if fmt != "WEBP" else encode(array, "WEBP", lossless=True)
    with FeaturizerClient(demo_server.target) as client:
        X = client.embed([data, array], model="alexnet")
    expected = reference_features(reference_model, array)
    assert np.abs(X[0] - expected).max() <= TOLERANCE
    assert np.abs(X[1] - expected).max() <= TOLERANCE


def test_health_not_serving_until_models_are_loaded(demo_registry_template):
    server = ServerThread(demo_registry_template, load=False)
    try:
        assert health_status(server.target) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert health_status(server.target, "featurizer.v1.Featurizer") == health_pb2.HealthCheckResponse.NOT_SERVING
        server.call(server.server.load_models())
        assert health_status(server.target) == health_pb2.HealthCheckResponse.SERVING
        assert health_status(server.target, "alexnet") == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop()


def test_reflection_lists_the_service(demo_server):
    with grpc.insecure_channel(demo_server.target) as channel:
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
        assert "featurizer.v1.Featurizer" in services
        assert "grpc.health.v1.Health" in services


def test_unknown_model_and_bad_image_get_clear_statuses(demo_server):
    good = encoded_photos()["chelsea"]
    with FeaturizerClient(demo_server.target) as client:
        with pytest.raises(FeaturizerError) as missing:
            client.embed([good], model="no-such-model")
        assert missing.value.code == grpc.StatusCode.NOT_FOUND
        assert "no-such-model" in missing.value.details and "alexnet" in missing.value.details

        with pytest.raises(FeaturizerError) as bad:
            client.embed([good, b"\xff\xd8\xff\xe0 truncated jpeg"], model="alexnet")
        assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "images[1]" in bad.value.details and "JPEG" in bad.value.details

        assert client.embed([good], model="alexnet").shape == (1, 9216)  # still serving
