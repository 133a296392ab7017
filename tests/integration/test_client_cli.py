"""The ``featurizer-client`` console script against a real server; its output matches the SDK's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from featurizer_client import FeaturizerClient
from tests.support.images import encode, photos
from tests.support.registries import publish_largenet
from tests.support.servers import ServerThread, free_port

CLI = str(Path(sys.executable).with_name("featurizer-client"))
LABELS = ("cat", "dog", "bird")
SAME = 1e-6  # float32 rounding of the same rows in differently composed server batches


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli-registry")
    publish_largenet(root, "largenet", num_classes=3, labels=LABELS, seed=5)
    return root


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli-images")
    for name, array in photos().items():
        (root / f"{name}.png").write_bytes(encode(array, "PNG"))
    return root


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=120)


def test_embed_writes_the_sdk_rows(server, image_dir, tmp_path):
    out = tmp_path / "x.npy"
    done = run("embed", str(image_dir), "-o", str(out), "--model", "largenet", "--batch-size", "2",
               "--target", server.target)
    assert done.returncode == 0, done.stderr
    with FeaturizerClient(server.target) as client:
        expected = client.embed(image_dir, model="largenet")
    X = np.load(out)
    assert X.shape == (len(photos()), 3) and np.abs(X - expected).max() <= SAME


def test_predict_json_and_table_match_the_sdk(server, image_dir):
    files = sorted(image_dir.glob("*.png"))
    as_json = run("predict", *map(str, files), "--model", "largenet", "--json", "--target", server.target)
    table = run("predict", str(image_dir / "*.png"), "--model", "largenet", "--top-k", "1", "--target", server.target)
    assert as_json.returncode == 0 and table.returncode == 0, as_json.stderr + table.stderr
    with FeaturizerClient(server.target) as client:
        expected = client.predict(files, model="largenet")
    rows = json.loads(as_json.stdout)
    assert [r["image"] for r in rows] == [str(f) for f in files]
    for row, p in zip(rows, expected):
        assert (row["label"], row["index"]) == (p.label, p.index)
        assert [c["probability"] for c in row["classes"]] == pytest.approx([c.probability for c in p.classes])
    lines = table.stdout.splitlines()[1:]
    assert [line.split()[:2] for line in lines] == [[str(f), p.label] for f, p in zip(files, expected)]


def test_models_lists_versions(server):
    done = run("models", "--json", "--target", server.target)
    assert done.returncode == 0, done.stderr
    (model,) = json.loads(done.stdout)
    assert model["name"] == "largenet" and model["versions"][0]["state"] == "AVAILABLE"
    assert model["versions"][0]["labels"] == list(LABELS)


def test_health_exit_status(server, registry):
    serving = run("health", "--target", server.target)
    assert (serving.returncode, serving.stdout.strip()) == (0, "SERVING")
    loading = ServerThread(registry, load=False)  # listening, models not loaded yet
    try:
        not_ready = run("health", "--target", loading.target)
    finally:
        loading.stop()
    nobody = run("health", "--target", f"127.0.0.1:{free_port()}", "--timeout", "5")
    assert (not_ready.returncode, not_ready.stdout.strip()) == (1, "NOT_SERVING")
    assert nobody.returncode == 1 and "UNAVAILABLE" in nobody.stderr


def test_failures_exit_non_zero_with_the_server_message(server, image_dir, tmp_path):
    done = run("embed", str(image_dir), "-o", str(tmp_path / "y.npy"), "--model", "no-such-model",
               "--target", server.target)
    assert done.returncode == 1
    assert "NOT_FOUND" in done.stderr and "no-such-model" in done.stderr and "largenet" in done.stderr
    assert not (tmp_path / "y.npy").exists()
    missing = run("embed", str(tmp_path / "nothing-here"), "-o", str(tmp_path / "z.npy"), "--target", server.target)
    assert missing.returncode == 2 and "nothing-here" in missing.stderr  # a bad argument
