"""`featurizer train` publishes into a registry a running server watches, and the SERVED
predictions are right: LargeNet on Fashion-MNIST, and a feature_head on a folder of real photos."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from featurizer.cli import main
from featurizer.demo import FASHION_DEMO_MODEL, publish_fashion_demo
from featurizer.training.datasets import FASHION_MNIST_LABELS, read_fashion_mnist
from featurizer_client import FeaturizerClient, FeaturizerError
from tests.support.images import encode, photos
from tests.support.reference import reference_features, torchvision_alexnet
from tests.support.servers import ServerProcess, running_server

SHOE_CLASSES = (7, 9)   # Sneaker, Ankle boot
PHOTO_CLASSES = ("chelsea", "coffee", "rocket")
DEADLINE_S = 120.0


def fashion_pngs(split: str, classes: tuple[int, ...]) -> tuple[list[bytes], list[str]]:
    """The dataset's own 28x28 greyscale images as PNG files, and their true label names."""
    images, labels = read_fashion_mnist(split)
    keep = np.flatnonzero(np.isin(labels, classes))
    pngs = []
    for index in keep:
        buffer = io.BytesIO()
        Image.fromarray(images[index], mode="L").save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    return pngs, [FASHION_MNIST_LABELS[labels[i]] for i in keep]


def photo_folder(root: Path, per_class: int = 6, seed: int = 0) -> dict[Path, str]:
    """root/<photo>/*.jpg: random crops (some mirrored) of one real photograph per class."""
    rng = np.random.default_rng(seed)
    files = {}
    for name in PHOTO_CLASSES:
        array = photos()[name]
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            h, w = array.shape[:2]
            ch, cw = int(h * rng.uniform(0.6, 0.9)), int(w * rng.uniform(0.6, 0.9))
            top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            crop = array[top:top + ch, left:left + cw]
            if i % 2:
                crop = crop[:, ::-1]
            path = root / name / f"{i}.jpg"
            path.write_bytes(encode(np.ascontiguousarray(crop), "JPEG"))
            files[path] = name
    return files


def published_report(version_dir: Path, epochs: int) -> dict:
    report = json.loads((version_dir / "report.json").read_text())
    assert [e["epoch"] for e in report["epochs"]] == list(range(1, epochs + 1))
    assert all(0 <= e["train_accuracy"] <= 1 and e["train_loss"] > 0 for e in report["epochs"])
    with Image.open(version_dir / "curves.png") as curves:
        assert curves.format == "PNG" and curves.width > 100
    return report


def test_largenet_trained_on_fashion_mnist_is_served_at_95_percent(demo_registry, capsys):
    pngs, truth = fashion_pngs("t10k", SHOE_CLASSES)
    with running_server(demo_registry) as server:
        wall, cpu = time.perf_counter(), time.process_time()
        assert main(["train", "--registry", str(demo_registry), "--name", "shoes", "--arch", "largenet",
                     "--fashion-mnist", "--classes", "7,9", "--epochs", "3", "--seed", "1", "--no-progress"]) == 0
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert "published shoes/1" in capsys.readouterr().out
        server.reload()  # the hot-reload step the poll loop runs
        with FeaturizerClient(server.target) as client:
            served = client.predict(pngs, model="shoes", top_k=2)

    labels = {p.label for p in served}
    assert labels <= {"Sneaker", "Ankle boot"} and len(labels) == 2
    accuracy = np.mean([p.label == t for p, t in zip(served, truth)])
    with capsys.disabled():
        print(f"\nLargeNet 7 vs 9, 3 epochs: trained and published in {wall:.1f} s ({cpu:.1f} s CPU); "
              f"served accuracy on {len(truth)} t10k images: {accuracy:.4f}")
    assert accuracy >= 0.95

    report = published_report(demo_registry / "shoes" / "1", epochs=3)
    assert report["classes"] == ["Sneaker", "Ankle boot"]
    matrix = np.array(report["confusion_matrix"]["matrix"])
    train_images = int(np.isin(read_fashion_mnist("train")[1], SHOE_CLASSES).sum())
    assert matrix.shape == (2, 2) and matrix.sum() == round(train_images * 0.2)  # the validation split
    assert np.trace(matrix) / matrix.sum() == pytest.approx(report["epochs"][-1]["val_accuracy"], abs=1e-6)


def head_reference(weights: dict[str, torch.Tensor], jpeg: bytes, model: torch.nn.Module) -> np.ndarray:
    """torchvision AlexNet pool5 on the preset tensor, averaged over space, through the head's
    published linear layer, softmaxed: what the served head must answer."""
    pooled = torch.from_numpy(reference_features(model, jpeg)).view(256, 6, 6).mean(dim=(1, 2))
    logits = pooled @ weights["head.1.weight"].T + weights["head.1.bias"]
    return torch.softmax(logits, 0).numpy()


def test_demo_registry_serves_a_real_fashion_mnist_model_deterministically(demo_server, demo_registry_template,
                                                                           tmp_path):
    pngs, truth = fashion_pngs("t10k", SHOE_CLASSES)
    with FeaturizerClient(demo_server.target) as client:
        served = client.predict(pngs[::4], model=FASHION_DEMO_MODEL)
    accuracy = np.mean([p.label == t for p, t in zip(served, truth[::4])])
    assert accuracy >= 0.9, accuracy

    publish_fashion_demo(tmp_path)  # the same seed again: the very same weights
    again = json.loads((tmp_path / FASHION_DEMO_MODEL / "1" / "model.json").read_text())
    first = json.loads((demo_registry_template / FASHION_DEMO_MODEL / "1" / "model.json").read_text())
    assert again["weights"]["sha256"] == first["weights"]["sha256"]


@pytest.mark.parametrize("flags, message", [
    (["--fashion-mnist", "--classes", "7"], "--classes: need two or more distinct"),
    (["--fashion-mnist", "--classes", "7,x"], "--classes: expected comma-separated"),
    (["--fashion-mnist", "--epochs", "0"], "--epochs: must be a positive integer, got 0"),
    (["--fashion-mnist", "--val-fraction", "1.5"], "--val-fraction: must be in [0, 1), got 1.5"),
    (["--data", "{tmp}/missing"], "--data: {tmp}/missing is not a directory"),
    (["--arch", "feature_head", "--data", "{tmp}", "--backbone", "nope"], "--backbone: model 'nope' is not in"),
])
def test_bad_training_options_name_the_option_and_publish_nothing(demo_registry, tmp_path, capsys, flags, message):
    flags = [f.format(tmp=tmp_path) for f in flags]
    before = sorted(p.name for p in demo_registry.iterdir())
    assert main(["train", "--registry", str(demo_registry), "--name", "bad", "--no-progress", *flags]) == 1
    assert message.format(tmp=tmp_path) in capsys.readouterr().err
    assert sorted(p.name for p in demo_registry.iterdir()) == before


def available_versions(target: str, model: str) -> list[int]:
    with FeaturizerClient(target, timeout=10) as client:
        try:
            return [v.version for v in client.get_model(model).versions if v.state == "AVAILABLE"]
        except FeaturizerError:  # NOT_FOUND until the server's scan finds the model
            return []


def test_feature_head_trained_by_the_cli_is_hot_reloaded_and_predicts_its_labels(demo_registry, tmp_path):
    """The user's path: a `featurizer serve` process polls the registry, `featurizer train` runs as
    its own process on a folder of real photos, and the new head is served without a restart,
    answering what torchvision's AlexNet plus the published head weights answer."""
    files = photo_folder(tmp_path / "photos")
    proc = ServerProcess(demo_registry, "--poll-interval", "0.3", "--log-level", "warning")
    try:
        assert available_versions(proc.target, "pets") == []
        trained = subprocess.run([sys.executable, "-m", "featurizer", "train", "--registry", str(demo_registry),
                                  "--name", "pets", "--arch", "feature_head", "--data", str(tmp_path / "photos"),
                                  "--no-progress"], capture_output=True, text=True, timeout=DEADLINE_S)
        assert trained.returncode == 0, trained.stderr[-2000:]
        started = time.monotonic()
        while available_versions(proc.target, "pets") != [1]:  # an external process: poll with a deadline
            assert proc.proc.poll() is None, "the server exited"
            assert time.monotonic() - started < DEADLINE_S, "the server never loaded pets@1"
            time.sleep(0.1)
        with FeaturizerClient(proc.target) as client:
            served = client.predict(list(files), model="pets", top_k=3)
    finally:
        proc.kill()
    assert [p.label for p in served] == list(files.values())  # right on every image of the folder

    version = demo_registry / "pets" / "1"
    manifest = json.loads((version / "model.json").read_text())
    assert manifest["kind"] == "head" and manifest["backbone"] == {"model": "alexnet", "version": 1}
    assert manifest["output"]["labels"] == sorted(PHOTO_CLASSES)
    published_report(version, epochs=100)  # the feature_head default
    weights = load_file(version / "weights.safetensors")
    reference = torchvision_alexnet()
    for prediction, path in list(zip(served, files))[::3]:
        expected = head_reference(weights, path.read_bytes(), reference)
        got = {c.index: c.probability for c in prediction.classes}
        assert np.allclose([got[i] for i in range(len(expected))], expected, atol=1e-4), path
