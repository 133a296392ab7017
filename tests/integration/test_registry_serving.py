"""Over real gRPC, cut AlexNet stacks, native inputs, heads sharing one backbone pass,
ListModels/GetModel, failed versions and aliases. References are torchvision modules on the same tensor."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
import torch
from featurizer_client.v1 import featurizer_pb2 as pb
from safetensors.torch import load_file
from torchvision.transforms.functional import normalize

from featurizer.architectures.alexnet import ALEXNET_LAYERS
from featurizer.registry.manifest import IMAGENET_MEAN, IMAGENET_STD
from tests.support.images import photos
from tests.support.reference import preset_tensor, torchvision_alexnet
from tests.support.registries import (NATIVE, flip_byte, publish_alexnet, publish_feature_head,
                                      publish_largenet)
from tests.support.rpc import embed, featurizer_stub, tensor_images, versions_by_number

TOLERANCE = 1e-4
CUTS = ("conv1", "conv2", "conv3", "conv4", "conv5", "pool5")
HEAD_LABELS = {"head-a": ("cat", "dog", "bird"), "head-b": ("no", "yes")}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    publish_alexnet(root, "alexnet", pooling="none", input=NATIVE)
    for layer in CUTS:
        publish_alexnet(root, f"alexnet-{layer}", layer=layer)
    publish_largenet(root, "largenet", num_classes=2, labels=("negative", "positive"))
    for i, (head, labels) in enumerate(HEAD_LABELS.items()):
        publish_feature_head(root, head, backbone="alexnet-conv5", in_features=256, labels=labels, hidden=8 * i, seed=i)
    publish_alexnet(root, "broken")
    flip_byte(root / "broken" / "1" / "weights.safetensors")
    publish_alexnet(root, "wrongshape")
    manifest = root / "wrongshape" / "1" / "model.json"
    manifest.write_text(manifest.read_text().replace('"shape": []', '"shape": [10]'))
    (root / "aliases.json").write_text(json.dumps({"prod": "alexnet-pool5@1", "loop-a": "loop-b", "loop-b": "loop-a"}))
    return root


@pytest.fixture(scope="module")
def reference_model():
    return torchvision_alexnet()


def native_tensor(image: np.ndarray) -> torch.Tensor:
    """What a `native` model sees: the image as is, scaled to [0, 1] and normalised. [1, 3, H, W]."""
    chw = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
    return normalize(chw, list(IMAGENET_MEAN), list(IMAGENET_STD)).unsqueeze(0)


def test_native_pool5_keeps_the_spatial_map_of_a_350x210_image(server, reference_model):
    image = photos()["astronaut"][:350, :210]  # H=350, W=210, the seed's alexNetConv example
    with featurizer_stub(server.target) as stub:
        _, maps = embed(stub, "alexnet", tensor_images([image]))
        _, flat = embed(stub, "alexnet", tensor_images([photos()["astronaut"][:224, :224]]), pooling=pb.POOLING_FLATTEN)
    assert maps.shape == (1, 256, 9, 5)
    assert flat.shape == (1, 9216)
    with torch.inference_mode():
        expected = reference_model.features(native_tensor(image)).numpy()
    assert np.abs(maps - expected).max() <= TOLERANCE


@pytest.mark.parametrize("layer", CUTS)
def test_each_cut_model_equals_torchvision_features_prefix(server, reference_model, layer):
    """Models cut after conv1..pool5, fed the same preprocessed float tensor as torchvision."""
    x = preset_tensor(photos()["chelsea"])
    with featurizer_stub(server.target) as stub:
        response, got = embed(stub, f"alexnet-{layer}", tensor_images([x[0].numpy()]))
    with torch.inference_mode():
        expected = torch.flatten(reference_model.features[: ALEXNET_LAYERS[layer] + 1](x), 1).numpy()
    assert response.model == f"alexnet-{layer}" and got.shape == expected.shape
    assert np.abs(got - expected).max() <= TOLERANCE


def test_every_layer_of_one_native_stack_is_selectable(server, reference_model):
    image = photos()["coffee"][:300, :260]
    x = native_tensor(image)
    with featurizer_stub(server.target) as stub:
        for name, index in ALEXNET_LAYERS.items():
            _, got = embed(stub, "alexnet", tensor_images([image]), layer=name)
            with torch.inference_mode():
                expected = reference_model.features[: index + 1](x).numpy()
            assert got.shape == expected.shape, name
            assert np.abs(got - expected).max() <= TOLERANCE, name


def head_logits(registry, head: str, features: torch.Tensor) -> np.ndarray:
    """The head computed by hand from its published weights: avg-pool, then its linear layers."""
    state = load_file(str(registry / head / "1" / "weights.safetensors"))
    x = features.mean(dim=(2, 3))
    linears = sorted({k.rsplit(".", 1)[0] for k in state}, key=lambda k: int(k.split(".")[1]))
    for i, name in enumerate(linears):
        x = x @ state[f"{name}.weight"].T + state[f"{name}.bias"]
        x = torch.relu(x) if i < len(linears) - 1 else x
    return x.numpy()


@pytest.mark.parametrize("head", sorted(HEAD_LABELS))
def test_head_and_its_backbone_together_cost_one_backbone_pass(server, registry, reference_model, head):
    runner = server.server.manager.versions[("alexnet-conv5", 1)].runner
    images = [photos()[n] for n in ("chelsea", "coffee", "rocket")]
    before_passes = runner.forward_passes
    before_batches = server.sample("featurizer_batch_size_count", model="alexnet-conv5")
    with featurizer_stub(server.target) as stub:
        response = stub.Predict(pb.PredictRequest(model=head, images=tensor_images(images), top_k=1,
                                                  include_features=True,
                                                  feature_options=pb.EmbedOptions(pooling=pb.POOLING_NONE)),
                                timeout=60)
    assert runner.forward_passes - before_passes == 1
    assert server.sample("featurizer_batch_size_count", model="alexnet-conv5") - before_batches == 1

    x = torch.cat([preset_tensor(image) for image in images])
    with torch.inference_mode():
        features = reference_model.features[: ALEXNET_LAYERS["conv5"] + 1](x)
    got = np.frombuffer(response.features.data, np.float32).reshape(tuple(response.features.shape))
    assert response.backbone == "alexnet-conv5" and np.abs(got - features.numpy()).max() <= TOLERANCE
    logits = head_logits(registry, head, features)
    labels = HEAD_LABELS[head]
    for prediction, row in zip(response.predictions, logits):
        best = int(np.argmax(row)) if len(row) > 1 else int(row[0] > 0)
        assert prediction.classes[0].label == labels[best]


def test_list_and_get_model_report_states_reasons_and_specs(server):
    with featurizer_stub(server.target) as stub:
        listed = {m.name: m for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models}
        aliases = stub.ListModels(pb.ListModelsRequest(), timeout=10).aliases
        via_alias = stub.GetModel(pb.GetModelRequest(model="prod"), timeout=10)
    native = versions_by_number(listed["alexnet"])[1]
    assert native.state == pb.MODEL_STATE_AVAILABLE and native.kind == "features"
    assert native.input.mode == "native" and list(native.output_shape) == [256, -1, -1]
    cut = versions_by_number(listed["alexnet-conv3"])[1]
    assert (cut.input.mode, cut.input.resize, cut.input.height, cut.input.width) == ("resize_crop", 256, 224, 224)
    assert list(cut.output_shape) == [384 * 13 * 13] and len(cut.sha256) == 64
    largenet = versions_by_number(listed["largenet"])[1]
    assert largenet.kind == "classifier" and list(largenet.labels) == ["negative", "positive"]
    assert (largenet.input.height, largenet.input.width) == (32, 32)
    head = versions_by_number(listed["head-b"])[1]
    assert (head.kind, head.backbone, head.backbone_version) == ("head", "alexnet-conv5", 1)
    assert list(head.labels) == ["no", "yes"] and list(head.output_shape) == [2]
    broken = versions_by_number(listed["broken"])[1]
    assert broken.state == pb.MODEL_STATE_FAILED and "sha256 mismatch" in broken.reason
    assert "broken/1/weights.safetensors" in broken.reason and listed["broken"].default_version == 0
    wrong = versions_by_number(listed["wrongshape"])[1]
    assert wrong.state == pb.MODEL_STATE_FAILED and "output.shape" in wrong.reason and "[10]" in wrong.reason
    assert dict(aliases)["prod"] == "alexnet-pool5@1"
    assert via_alias.name == "alexnet-pool5" and via_alias.default_version == 1


def test_failed_versions_unknown_names_and_alias_cycles_get_clear_statuses(server):
    image = tensor_images([photos()["chelsea"]])
    with featurizer_stub(server.target) as stub:
        with pytest.raises(grpc.RpcError) as failed:
            embed(stub, "broken", image)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE and "sha256 mismatch" in failed.value.details()
        with pytest.raises(grpc.RpcError) as pinned:
            embed(stub, "broken", image, version=1)
        assert pinned.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "broken" in pinned.value.details()
        with pytest.raises(grpc.RpcError) as cycle:
            embed(stub, "loop-a", image)
        assert cycle.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "alias cycle: loop-a -> loop-b -> loop-a" in cycle.value.details()
        with pytest.raises(grpc.RpcError) as get_cycle:
            stub.GetModel(pb.GetModelRequest(model="loop-b"), timeout=10)
        assert get_cycle.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as missing_version:
            embed(stub, "alexnet", image, version=7)
        assert missing_version.value.code() == grpc.StatusCode.NOT_FOUND and "version 7" in missing_version.value.details()
        with pytest.raises(grpc.RpcError) as late_layer:
            embed(stub, "alexnet-conv1", image, layer="pool5")
        assert late_layer.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "pool5" in late_layer.value.details()
        response, _ = embed(stub, "prod", image)  # still serving, alias resolved
    assert (response.model, response.version) == ("alexnet-pool5", 1)
