"""Over real gRPC: a model's ``input.decode`` mode on real photos of several sizes, phone-size
ones included. Exact mode equals torchvision's preset and AlexNet within 1e-4; fast mode (reduced-
scale JPEG decoding) stays within the embedding cosine measured in docs/performance.md."""

from __future__ import annotations

import numpy as np
import pytest
from featurizer_client.v1 import featurizer_pb2 as pb

from featurizer.registry.manifest import DecodeMode, InputSpec
from tests.support.phone_photos import sized_photos
from tests.support.reference import reference_features, torchvision_alexnet
from tests.support.registries import publish_alexnet
from tests.support.rpc import embed

TOLERANCE = 1e-4
FAST_MIN_COSINE = 0.9999  # measured worst on every offline photo: 0.999945 (docs/performance.md)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    publish_alexnet(root, "exact")
    publish_alexnet(root, "fast", input=InputSpec(decode=DecodeMode.FAST))
    return root


@pytest.fixture(scope="module")
def references():
    model = torchvision_alexnet()
    return {name: reference_features(model, data) for name, data in sized_photos().items()}


def rows(stub, model: str, name: str) -> np.ndarray:
    return embed(stub, model, [pb.Image(encoded=sized_photos()[name])])[1][0].astype(np.float64)


@pytest.mark.parametrize("name", sorted(sized_photos()))
def test_exact_mode_equals_the_torchvision_preset(stub, references, name):
    assert np.abs(rows(stub, "exact", name) - references[name]).max() <= TOLERANCE


@pytest.mark.parametrize("name", sorted(sized_photos()))
def test_fast_mode_stays_within_the_measured_cosine(stub, references, name):
    fast, reference = rows(stub, "fast", name), references[name].astype(np.float64)
    cosine = fast @ reference / (np.linalg.norm(fast) * np.linalg.norm(reference))
    assert cosine >= FAST_MIN_COSINE, cosine


def test_fast_mode_is_exact_on_photos_too_small_to_reduce(stub, references):
    name = "chelsea@original"  # 451x300: below twice the resize, decoded at full size
    assert np.abs(rows(stub, "fast", name) - references[name]).max() <= TOLERANCE
