"""A second layered architecture, VGG-11's ``features``, serves through the same request path as
AlexNet's: one registered builder, no change to engine, runner, warm-up or visualize.

Seeded torchvision VGG-11 weights are published into a registry, a real server serves them, and
Embed over real gRPC at several layers and poolings equals torchvision's own
``vgg11().features[:k+1]`` on the same preprocessed tensor. The manifest's input is 64x64
(VGG-11 at 224 costs ~7.6 GFLOP an image on the CPU; at 64, a twelfth of that).
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from featurizer_client.v1 import featurizer_pb2 as pb

from featurizer.architectures import build
from featurizer.cli import main
from featurizer.registry.manifest import InputSpec, Manifest, OutputSpec
from featurizer.registry.registry import Registry
from tests.support.images import encode, photos
from tests.support.reference import torchvision_vgg11, vgg11_preset_tensor
from tests.support.rpc import embed, featurizer_stub, tensor_images

TOLERANCE = 1e-5
CROP, RESIZE = 64, 72
INPUT = InputSpec(mode="resize_crop", resize=RESIZE, height=CROP, width=CROP)
# torchvision's own layer indices in vgg11().features, written out here (not read from the builder).
LAYERS = {"conv1_1": 0, "pool1": 2, "relu2_1": 4, "conv3_2": 8, "pool3": 10, "relu4_2": 14, "pool5": 20}
POOLINGS = {pb.POOLING_NONE: lambda m: m, pb.POOLING_FLATTEN: lambda m: torch.flatten(m, 1),
            pb.POOLING_AVG: lambda m: torch.flatten(F.adaptive_avg_pool2d(m, 1), 1),
            pb.POOLING_MAX: lambda m: torch.flatten(F.adaptive_max_pool2d(m, 1), 1)}


def publish_vgg11(root: Path, model: str, reference: torch.nn.Module, *, layer: str, pooling: str) -> int:
    """torchvision's ``features.*`` tensors under the builder's state-dict names, published as a new version."""
    params = {"layer": layer, "pooling": pooling}
    wanted = build("vgg11_features", params).state_dict().keys()
    state = {k: v for k, v in reference.state_dict().items() if k in wanted}
    manifest = Manifest(kind="features", architecture="vgg11_features", params=params, input=INPUT,
                        output=OutputSpec(), description="torchvision VGG-11 `features` (seeded weights)")
    return Registry(root).publish(model, manifest, state)


@pytest.fixture(scope="module")
def reference_model():
    return torchvision_vgg11(seed=3)


@pytest.fixture(scope="module")
def registry(tmp_path_factory, reference_model):
    root = tmp_path_factory.mktemp("registry")
    publish_vgg11(root, "vgg11", reference_model, layer="pool5", pooling="flatten")
    publish_vgg11(root, "vgg11-conv3", reference_model, layer="relu3_2", pooling="avg")
    return root


@pytest.fixture(scope="module")
def inputs() -> torch.Tensor:
    """Two photos through torchvision's VGG11 preset at 64x64: [2, 3, 64, 64] float32."""
    return torch.cat([vgg11_preset_tensor(photos()[name], crop=CROP, resize=RESIZE) for name in ("chelsea", "coffee")])


@torch.inference_mode()
def reference_rows(model: torch.nn.Module, x: torch.Tensor, layer: str, pooling: int) -> np.ndarray:
    return POOLINGS[pooling](model.features[: LAYERS[layer] + 1](x)).numpy()


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_and_pooling_equals_torchvision_features_prefix(server, reference_model, inputs, layer):
    with featurizer_stub(server.target) as stub:
        for pooling in POOLINGS:
            response, got = embed(stub, "vgg11", tensor_images(list(inputs.numpy())), layer=layer, pooling=pooling)
            expected = reference_rows(reference_model, inputs, layer, pooling)
            assert response.model == "vgg11" and got.shape == expected.shape, (layer, pooling)
            assert np.abs(got - expected).max() <= TOLERANCE, (layer, pb.Pooling.Name(pooling))


def test_a_cut_model_serves_its_own_layer_and_pooling_by_default(server, reference_model, inputs):
    with featurizer_stub(server.target) as stub:
        _, whole = embed(stub, "vgg11", tensor_images(list(inputs.numpy())))
        _, cut = embed(stub, "vgg11-conv3", tensor_images(list(inputs.numpy())))
        _, earlier = embed(stub, "vgg11-conv3", tensor_images(list(inputs.numpy())), layer="pool2")
    assert whole.shape == (2, 512 * 2 * 2)  # pool5 of a 64x64 input, flattened
    assert np.abs(whole - reference_rows(reference_model, inputs, "pool5", pb.POOLING_FLATTEN)).max() <= TOLERANCE
    assert cut.shape == (2, 256)  # relu3_2, average-pooled: the manifest's own cut and pooling
    with torch.inference_mode():
        expected = reference_model.features[:10](inputs).mean(dim=(2, 3)).numpy()
        pool2 = reference_model.features[:6](inputs).mean(dim=(2, 3)).numpy()
    assert np.abs(cut - expected).max() <= TOLERANCE
    assert np.abs(earlier - pool2).max() <= TOLERANCE


def test_encoded_images_go_through_the_servers_preprocessing(server, reference_model):
    """A PNG goes through the server's decoder, resize and crop: the same numbers as torchvision's preset."""
    image = photos()["astronaut"]
    with featurizer_stub(server.target) as stub:
        _, got = embed(stub, "vgg11", [pb.Image(encoded=encode(image, "PNG"))], layer="relu2_1",
                       pooling=pb.POOLING_AVG)
    expected = reference_rows(reference_model, vgg11_preset_tensor(image, crop=CROP, resize=RESIZE), "relu2_1",
                              pb.POOLING_AVG)
    assert np.abs(got - expected).max() <= TOLERANCE


def test_layers_are_the_models_own_names(server):
    x = np.zeros((3, CROP, CROP), np.float32)
    with featurizer_stub(server.target) as stub:
        for model, layer, message in [
            ("vgg11-conv3", "conv4_1", "options.layer: 'conv4_1' comes after this model's last layer, relu3_2 (9)"),
            ("vgg11", "conv3", "options.layer: unknown layer 'conv3'; expected one of conv1_1, relu1_1, pool1"),
            ("vgg11", "21", "options.layer: layer index 21 is outside the stack's layers"),
        ]:
            with pytest.raises(grpc.RpcError) as caught:
                embed(stub, model, tensor_images([x]), layer=layer)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in caught.value.details(), caught.value.details()


def test_visualize_draws_a_vgg_layer(registry, reference_model, tmp_path, capsys):
    """``featurizer visualize`` on the new architecture: one tile per channel of the named layer."""
    image = tmp_path / "cat.png"
    image.write_bytes(encode(photos()["chelsea"], "PNG"))
    out = tmp_path / "conv2_1.png"
    assert main(["visualize", "--registry", str(registry), "--model", "vgg11", "--layer", "conv2_1",
                 str(image), "-o", str(out)]) == 0
    channels = reference_model.features[LAYERS["relu2_1"] - 1].out_channels
    assert f"{channels} conv2_1 feature maps" in capsys.readouterr().out
    assert main(["visualize", "--registry", str(registry), "--model", "vgg11", "--layer", "conv1",
                 str(image), "-o", str(tmp_path / "x.png")]) == 1
    assert "--layer: unknown layer 'conv1'; expected one of conv1_1" in capsys.readouterr().err
