"""Bidirectional streams for bulk jobs — answers in order with the caller's ids, a bad
item gets a per-item error and the stream goes on."""

from __future__ import annotations

import shutil

import grpc
import numpy as np
import pytest

from featurizer_client.tensors import from_proto
from featurizer_client.v1 import featurizer_pb2 as pb
from tests.support.images import encoded_photos
from tests.support.reference import reference_features, torchvision_alexnet
from tests.support.registries import publish_feature_head

ITEMS = 500
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def registry(demo_registry_template, tmp_path_factory):
    root = tmp_path_factory.mktemp("streams") / "registry"
    shutil.copytree(demo_registry_template, root)
    publish_feature_head(root, "objects", labels=("cat", "cup", "rocket"))
    return root


def _bad_kind(i: int) -> str:
    """Which items are bad, and how: a mix of INVALID_ARGUMENT and NOT_FOUND rows."""
    return "undecodable" if i % 37 == 5 else "unknown-model" if i % 61 == 7 else ""


def test_embed_stream_of_500_items_answers_in_order_with_per_item_errors(stub):
    photos = encoded_photos("JPEG")
    names = sorted(photos)
    model = torchvision_alexnet()
    expected = {name: reference_features(model, photos[name]) for name in names}

    def requests():
        for i in range(ITEMS):
            image = pb.Image(encoded=b"\xff\xd8\xffnot a jpeg" if _bad_kind(i) == "undecodable" else photos[names[i % len(names)]])
            model = "no-such-model" if _bad_kind(i) == "unknown-model" else "alexnet"
            yield pb.EmbedStreamRequest(id=f"item-{i}", request=pb.EmbedRequest(model=model, images=[image]))

    answers = list(stub.EmbedStream(requests(), timeout=300))

    assert [a.id for a in answers] == [f"item-{i}" for i in range(ITEMS)]
    bad = [i for i in range(ITEMS) if _bad_kind(i)]
    assert 0 < len(bad) < ITEMS // 10
    for i, answer in enumerate(answers):
        kind = _bad_kind(i)
        if kind:
            assert answer.WhichOneof("result") == "error", answer.id
            code = "INVALID_ARGUMENT" if kind == "undecodable" else "NOT_FOUND"
            assert (answer.error.code_name, answer.error.code) == (code, getattr(grpc.StatusCode, code).value[0])
            assert ("images[0]" if kind == "undecodable" else "no-such-model") in answer.error.message
        else:
            assert answer.WhichOneof("result") == "response", (answer.id, answer.error.message)
            row = from_proto(answer.response.embeddings)[0]
            assert np.abs(row - expected[names[i % len(names)]]).max() <= TOLERANCE, answer.id


def test_predict_stream_goes_on_after_a_bad_item(stub):
    jpeg = encoded_photos("JPEG")["chelsea"]
    top_ks = [1, 9, 2, 0]  # 9 > 3 classes: that item alone is INVALID_ARGUMENT
    requests = [pb.PredictStreamRequest(id=f"p{i}", request=pb.PredictRequest(model="objects", images=[pb.Image(encoded=jpeg)],
                                                                              top_k=k)) for i, k in enumerate(top_ks)]
    answers = list(stub.PredictStream(iter(requests), timeout=120))
    assert [a.id for a in answers] == ["p0", "p1", "p2", "p3"]
    assert answers[1].error.code_name == "INVALID_ARGUMENT" and "top_k" in answers[1].error.message
    assert [len(a.response.predictions[0].classes) for a in (answers[0], answers[2], answers[3])] == [1, 2, 3]
    first = answers[0].response.predictions[0].classes[0]
    assert (first.index, first.probability) == (answers[3].response.predictions[0].classes[0].index,
                                                answers[3].response.predictions[0].classes[0].probability)
