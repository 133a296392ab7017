"""``featurizer registry add`` / ``import-torchvision`` / ``verify`` / ``list``, then the published
models served over real gRPC and compared with torchvision / the builders on the same tensors."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from featurizer_client.v1 import featurizer_pb2 as pb
from safetensors.torch import save_file
from torchvision.models import AlexNet_Weights

from featurizer.architectures import build
from featurizer.architectures.alexnet import ALEXNET_LAYERS
from featurizer.cli import main as featurizer_cli
from tests.support.images import photos
from tests.support.reference import preset_tensor, torchvision_alexnet
from tests.support.registries import save_torchvision_state_dict, seeded_state
from tests.support.rpc import embed, featurizer_stub, tensor_images, versions_by_number

TOLERANCE = 1e-4
LARGENET_PARAMS = {"num_classes": 3}
HEAD_PARAMS = {"in_features": 384, "num_classes": 2, "pooling": "max"}
HEAD_LABELS = ("indoor", "outdoor")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("files")
    save_torchvision_state_dict(folder / "alexnet.pth", seed=0)
    save_file(seeded_state("largenet", LARGENET_PARAMS, seed=3), str(folder / "largenet.safetensors"))
    save_file(seeded_state("feature_head", HEAD_PARAMS, seed=4), str(folder / "head.safetensors"))
    (folder / "labels.txt").write_text("\n".join(HEAD_LABELS) + "\n")
    return folder


@pytest.fixture(scope="module")
def registry(files, tmp_path_factory):
    """A registry written only through the CLI."""
    root = tmp_path_factory.mktemp("cli-registry")
    commands = [
        ["import-torchvision", root, "--arch", "alexnet", "--weights-file", files / "alexnet.pth",
         "--layer", "conv3", "--pooling", "avg"],
        ["import-torchvision", root, "--arch", "alexnet", "--weights-file", files / "alexnet.pth", "--classifier"],
        ["add", root, "--model", "largenet", "--from", files / "largenet.safetensors", "--kind", "classifier",
         "--architecture", "largenet", "--params", json.dumps(LARGENET_PARAMS), "--input-mode", "resize",
         "--height", "32", "--width", "32", "--mean", "0.5", "0.5", "0.5", "--std", "0.5", "0.5", "0.5",
         "--labels", "shirt,sneaker,boot", "--output-shape", "3"],
        ["add", root, "--model", "head", "--from", files / "head.safetensors", "--kind", "head",
         "--architecture", "feature_head", "--params", json.dumps(HEAD_PARAMS), "--backbone", "alexnet@1",
         "--labels-file", files / "labels.txt"],
    ]
    for command in commands:
        assert featurizer_cli(["registry", *map(str, command)]) == 0, command
    return root


@pytest.fixture(scope="module")
def reference_model():
    """torchvision's AlexNet with the weights the saved state dict holds (seed 0)."""
    return torchvision_alexnet(0)


def test_imported_features_equal_torchvision_on_the_same_image(server, reference_model):
    image = photos()["rocket"]
    with featurizer_stub(server.target) as stub:
        response, rows = embed(stub, "alexnet", tensor_images([image]))
        info = versions_by_number(stub.GetModel(pb.GetModelRequest(model="alexnet"), timeout=10))[1]
    with torch.inference_mode():
        fmap = reference_model.features[: ALEXNET_LAYERS["conv3"] + 1](preset_tensor(image))
    assert response.version == 1 and rows.shape == (1, 384)
    assert np.abs(rows[0] - fmap.mean(dim=(2, 3))[0].numpy()).max() <= TOLERANCE
    assert (info.input.mode, info.input.resize, info.input.height) == ("resize_crop", 256, 224)
    assert list(info.output_shape) == [384]


def test_imported_classifier_predicts_like_torchvision_with_imagenet_labels(server, reference_model):
    image = photos()["chelsea"]
    with featurizer_stub(server.target) as stub:
        response = stub.Predict(pb.PredictRequest(model="alexnet-classifier", images=tensor_images([image]), top_k=3),
                                timeout=60)
    with torch.inference_mode():
        probs = torch.softmax(reference_model(preset_tensor(image)), dim=1)[0]
    top = torch.topk(probs, 3)
    categories = AlexNet_Weights.IMAGENET1K_V1.meta["categories"]
    got = response.predictions[0].classes
    assert [c.index for c in got] == top.indices.tolist()
    assert [c.label for c in got] == [categories[i] for i in top.indices.tolist()]
    assert np.abs(np.array([c.probability for c in got]) - top.values.numpy()).max() <= 1e-5


def test_added_safetensors_classifier_serves_its_weights_and_labels(server, files):
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(7))  # already preprocessed
    with featurizer_stub(server.target) as stub:
        response = stub.Predict(pb.PredictRequest(model="largenet", images=tensor_images([x[0].numpy()]), top_k=3),
                                timeout=60)
    model = build("largenet", LARGENET_PARAMS)
    model.load_state_dict(seeded_state("largenet", LARGENET_PARAMS, seed=3))
    with torch.inference_mode():
        probs = torch.softmax(model.eval()(x), dim=1)[0].numpy()
    got = {c.label: c.probability for c in response.predictions[0].classes}
    assert np.abs(np.array([got[label] for label in ("shirt", "sneaker", "boot")]) - probs).max() <= 1e-5


def test_added_head_sits_on_the_imported_backbone(server, reference_model):
    image = photos()["coffee"]
    with featurizer_stub(server.target) as stub:
        info = versions_by_number(stub.GetModel(pb.GetModelRequest(model="head"), timeout=10))[1]
        response = stub.Predict(pb.PredictRequest(model="head", images=tensor_images([image]), top_k=2), timeout=60)
    assert (info.state, info.backbone, info.backbone_version) == (pb.MODEL_STATE_AVAILABLE, "alexnet", 1)
    assert list(info.labels) == list(HEAD_LABELS)
    head = build("feature_head", HEAD_PARAMS)
    head.load_state_dict(seeded_state("feature_head", HEAD_PARAMS, seed=4))
    with torch.inference_mode():
        fmap = reference_model.features[: ALEXNET_LAYERS["conv3"] + 1](preset_tensor(image))
        probs = torch.softmax(head.eval()(fmap), dim=1)[0].numpy()
    got = {c.label: c.probability for c in response.predictions[0].classes}
    assert np.abs(np.array([got[label] for label in HEAD_LABELS]) - probs).max() <= 1e-5


def test_list_and_verify_a_clean_registry(registry, capsys):
    capsys.readouterr()
    assert featurizer_cli(["registry", "list", str(registry)]) == 0
    listing = capsys.readouterr().out
    for name, kind in (("alexnet", "features"), ("alexnet-classifier", "classifier"), ("largenet", "classifier")):
        assert any(line.split()[:3] == [name, "1", kind] for line in listing.splitlines()), listing
    assert featurizer_cli(["registry", "verify", str(registry)]) == 0
    assert "all weights files match" in capsys.readouterr().out


def test_add_refuses_bad_inputs_and_publishes_nothing(files, tmp_path, capsys):
    root = tmp_path / "registry"
    manifest = tmp_path / "model.json"
    manifest.write_text(json.dumps({"kind": "classifier", "architecture": "largenet", "params": LARGENET_PARAMS,
                                    "input": {"mode": "resize", "height": 32, "width": 32},
                                    "output": {"labels": ["a", "b", "c"]}, "weights": {"sha256": "ab" * 32}}))
    base = ["registry", "add", str(root), "--model", "m", "--from", str(files / "largenet.safetensors")]
    capsys.readouterr()
    assert featurizer_cli([*base, "--manifest", str(manifest)]) == 1
    assert "'weights.sha256' is " + "ab" * 32 in capsys.readouterr().err
    manifest.write_text(manifest.read_text().replace('"sha256": "' + "ab" * 32 + '"', '"file": "weights.safetensors"'))
    assert featurizer_cli([*base, "--manifest", str(manifest), "--params", '{"num_classes": 5}']) == 1
    assert "weights do not fit architecture 'largenet'" in capsys.readouterr().err
    assert featurizer_cli([*base, "--kind", "features", "--architecture", "no_such_builder"]) == 1
    assert "unknown architecture 'no_such_builder'" in capsys.readouterr().err
    assert featurizer_cli([*base[:-1], str(files / "alexnet.pth"), "--manifest", str(manifest)]) == 1
    assert "not a valid safetensors file" in capsys.readouterr().err
    assert not (root / "m").exists() or list((root / "m").iterdir()) == []


class NotATensor:
    """Anything but tensors in a state dict file is refused by torch.load(weights_only=True)."""


def test_import_refuses_pickled_code_and_foreign_layouts(tmp_path, capsys):
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as handle:
        pickle.dump({"features.0.weight": NotATensor()}, handle)
    foreign = tmp_path / "foreign.pth"
    torch.save({"conv.weight": torch.zeros(1)}, foreign)
    capsys.readouterr()
    root = tmp_path / "registry"
    assert featurizer_cli(["registry", "import-torchvision", str(root), "--arch", "alexnet",
                           "--weights-file", str(evil)]) == 1
    assert "not a tensors-only state dict" in capsys.readouterr().err
    assert featurizer_cli(["registry", "import-torchvision", str(root), "--arch", "alexnet",
                           "--weights-file", str(foreign)]) == 1
    assert "missing features.0.bias" in capsys.readouterr().err
    assert not (root / "alexnet").exists() or list((root / "alexnet").iterdir()) == []
