"""Embed options and Predict over real gRPC, checked against independent references.

References: torchvision's AlexNet (same seeded weights) on torchvision's preset tensor, heads and
LargeNet applied to that with their seeded state dicts, softmax/sigmoid in numpy.
"""

from __future__ import annotations

import shutil

import grpc
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from featurizer.architectures import build
from featurizer_client.tensors import from_proto, to_proto
from featurizer_client.v1 import featurizer_pb2 as pb
from tests.support.images import encode, encoded_photos, photos
from tests.support.reference import largenet_reference, preset_tensor, torchvision_alexnet
from tests.support.registries import publish_feature_head, publish_largenet, seeded_state

TOLERANCE = 1e-4
HEAD_LABELS = ("cat", "cup", "rocket")
HEAD_PARAMS = {"in_features": 256, "num_classes": 3, "pooling": "avg", "hidden": 0}
LARGENET_LABELS = tuple(f"class{i}" for i in range(10))


@pytest.fixture(scope="module")
def registry(demo_registry_template, tmp_path_factory):
    root = tmp_path_factory.mktemp("predict") / "registry"
    shutil.copytree(demo_registry_template, root)
    publish_feature_head(root, "objects", labels=HEAD_LABELS, seed=3)
    publish_largenet(root, "largenet10", num_classes=10, labels=LARGENET_LABELS, seed=4)
    publish_largenet(root, "largenet-binary", num_classes=1, labels=("negative", "positive"), seed=5)
    return root


@pytest.fixture(scope="module")
def photos_and_maps():
    """Two real JPEGs and torchvision AlexNet's feature map after every layer, per photo."""
    jpegs = encoded_photos("JPEG")
    data = [jpegs["chelsea"], jpegs["rocket"]]
    model = torchvision_alexnet()
    with torch.inference_mode():
        x = torch.cat([preset_tensor(d) for d in data])
        maps, y = [], x
        for layer in model.features:
            y = layer(y)
            maps.append(y.clone())  # torchvision's ReLUs work in place: keep each layer's own output
    return data, maps


def _images(data: list[bytes]) -> list[pb.Image]:
    return [pb.Image(encoded=d) for d in data]


def _embed(stub, data, **options) -> np.ndarray:
    response = stub.Embed(pb.EmbedRequest(model="alexnet", images=_images(data), options=pb.EmbedOptions(**options)),
                          timeout=60)
    return from_proto(response.embeddings)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("layer, pooling, index, reduce", [
    ("conv3", pb.POOLING_DEFAULT, 6, lambda m: m.flatten(1)),
    ("7", pb.POOLING_DEFAULT, 7, lambda m: m.flatten(1)),
    ("", pb.POOLING_AVG, 12, lambda m: m.mean(dim=(2, 3))),
    ("relu4", pb.POOLING_MAX, 9, lambda m: m.amax(dim=(2, 3))),
    ("", pb.POOLING_NONE, 12, lambda m: m),
])
def test_embed_layer_and_pooling_match_torchvision(stub, photos_and_maps, layer, pooling, index, reduce):
    data, maps = photos_and_maps
    X = _embed(stub, data, layer=layer, pooling=pooling)
    expected = reduce(maps[index]).numpy()
    assert X.dtype == np.float32 and X.shape == expected.shape
    assert np.abs(X - expected).max() <= TOLERANCE


def test_embed_l2_normalize_and_float16(stub, photos_and_maps):
    data, maps = photos_and_maps
    plain = maps[12].flatten(1).numpy()
    unit = plain / np.linalg.norm(plain, axis=1, keepdims=True)
    X = _embed(stub, data, normalize=True, output_dtype=pb.DTYPE_FLOAT16)
    assert X.dtype == np.float16 and X.shape == plain.shape
    assert np.abs(X.astype(np.float32) - unit).max() <= 1e-3  # float16 keeps ~3 significant digits
    assert np.allclose(np.linalg.norm(X.astype(np.float32), axis=1), 1.0, atol=1e-2)
    X32 = _embed(stub, data, normalize=True)
    assert X32.dtype == np.float32 and np.abs(X32 - unit).max() <= 1e-6


def test_predict_head_top_k_softmax_and_features_from_one_backbone_pass(server, stub, photos_and_maps):
    data, maps = photos_and_maps
    state = seeded_state("feature_head", HEAD_PARAMS, 3)
    pooled = maps[12].mean(dim=(2, 3))
    probs = _softmax(F.linear(pooled, state["head.1.weight"], state["head.1.bias"]).numpy())
    passes = server.sample("featurizer_batch_size_count", model="alexnet")

    response = stub.Predict(pb.PredictRequest(
        model="objects", images=_images(data), top_k=2, include_features=True,
        feature_options=pb.EmbedOptions(pooling=pb.POOLING_AVG)), timeout=60)

    assert server.sample("featurizer_batch_size_count", model="alexnet") == passes + 1  # one pass, both outputs
    assert (response.model, response.version, response.backbone, response.backbone_version) == ("objects", 1, "alexnet", 1)
    assert len(response.predictions) == len(data)
    for p, prediction in zip(probs, response.predictions):
        order = np.argsort(-p)[:2]
        assert [c.index for c in prediction.classes] == order.tolist()
        assert [c.label for c in prediction.classes] == [HEAD_LABELS[j] for j in order]
        assert np.abs(np.array([c.probability for c in prediction.classes]) - p[order]).max() <= TOLERANCE
        assert prediction.positive_probability == 0.0
    assert np.abs(from_proto(response.features) - pooled.numpy()).max() <= TOLERANCE

    default_k = stub.Predict(pb.PredictRequest(model="objects", images=_images(data[:1])), timeout=60)
    assert len(default_k.predictions[0].classes) == len(HEAD_LABELS)  # default 5, capped at the classes
    assert not default_k.HasField("features")


def _largenet_input(seed: int) -> np.ndarray:
    """A caller-preprocessed float32 [3, 32, 32] tensor (LargeNet's input)."""
    return np.random.default_rng(seed).standard_normal((3, 32, 32)).astype(np.float32)


def _largenet_logits(params: dict, seed: int, x: np.ndarray) -> np.ndarray:
    module = build("largenet", params)
    module.load_state_dict(seeded_state("largenet", params, seed))
    with torch.inference_mode():
        return module.eval()(torch.from_numpy(x)).numpy()


def test_predict_largenet_top_k_equals_numpy_softmax(stub):
    x = np.stack([_largenet_input(1), _largenet_input(2)])
    probs = _softmax(_largenet_logits({"num_classes": 10}, 4, x))
    response = stub.Predict(pb.PredictRequest(
        model="largenet10", images=[pb.Image(tensor=to_proto(t)) for t in x], top_k=4), timeout=60)
    for p, prediction in zip(probs, response.predictions):
        order = np.argsort(-p)[:4]
        assert [c.index for c in prediction.classes] == order.tolist()
        assert [c.label for c in prediction.classes] == [LARGENET_LABELS[j] for j in order]
        assert np.abs(np.array([c.probability for c in prediction.classes]) - p[order]).max() <= TOLERANCE


def test_predict_binary_head_gives_sigmoid_positive_probability(stub):
    x = np.stack([_largenet_input(3), _largenet_input(4)])
    positive = 1 / (1 + np.exp(-_largenet_logits({"num_classes": 1}, 5, x)[:, 0].astype(np.float64)))
    response = stub.Predict(pb.PredictRequest(
        model="largenet-binary", images=[pb.Image(tensor=to_proto(t)) for t in x]), timeout=60)
    for p, prediction in zip(positive, response.predictions):
        assert abs(prediction.positive_probability - p) <= TOLERANCE
        top = prediction.classes[0]
        assert (top.label, top.index) == (("positive", 1) if p >= 0.5 else ("negative", 0))
        assert abs(top.probability - max(p, 1 - p)) <= TOLERANCE


def _tiny_images() -> list[np.ndarray]:
    """Real photos shrunk to LargeNet sizes (prepared inline) and one large flat image whose PNG is
    a few KB (probed inline, decoded on the pool)."""
    small = [np.array(Image.fromarray(photos()[name]).resize(size)) for name, size in
             (("chelsea", (32, 32)), ("coffee", (60, 40)), ("rocket", (48, 64)))]
    return small + [np.full((1500, 1500, 3), 120, np.uint8)]


def test_predict_largenet_on_tiny_encoded_images_matches_torchvision(stub):
    arrays = _tiny_images()
    sent = [encode(arrays[0], "PNG"), encode(arrays[1], "PNG"), arrays[2], encode(arrays[3], "PNG")]
    assert len(sent[3]) < 16 * 1024  # the small file that expands into 2.25 million pixels
    images = [pb.Image(encoded=s) if isinstance(s, bytes) else pb.Image(tensor=to_proto(s)) for s in sent]
    response = stub.Predict(pb.PredictRequest(model="largenet10", images=images, top_k=10), timeout=60)
    state = seeded_state("largenet", {"num_classes": 10}, 4)
    for array, prediction in zip(arrays, response.predictions):
        expected = _softmax(largenet_reference(state, array[None]))[0]
        got = np.zeros(10)
        got[[c.index for c in prediction.classes]] = [c.probability for c in prediction.classes]
        assert np.abs(got - expected).max() <= TOLERANCE


def test_a_bad_tiny_image_is_refused_by_position_and_the_next_call_is_served(stub):
    good = encode(_tiny_images()[0], "PNG")
    with pytest.raises(grpc.RpcError) as refused:
        stub.Predict(pb.PredictRequest(model="largenet10", images=_images([good, b"GIF89a\x01"])), timeout=60)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "images[1]" in refused.value.details()
    assert len(stub.Predict(pb.PredictRequest(model="largenet10", images=_images([good])), timeout=60).predictions) == 1
