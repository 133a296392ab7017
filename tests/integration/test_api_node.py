"""A client in another language, generated only from the .proto, gets the same embedding.

``tests/node/embed.js`` loads protos/featurizer/v1/featurizer.proto with @grpc/proto-loader and
calls Embed through @grpc/grpc-js (``make node-deps`` installs them from tests/node/package.json).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np

from featurizer_client import FeaturizerClient
from tests.support.images import encoded_photos

NODE_DIR = Path(__file__).resolve().parents[1] / "node"


def _node_embed(target: str, model: str, files: list[Path]) -> dict:
    node = shutil.which("node")
    assert node, "Node.js is required (Debian package nodejs)"
    assert (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir(), "run `make node-deps` first"
    done = subprocess.run([node, str(NODE_DIR / "embed.js"), target, model, *map(str, files)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def test_node_client_from_the_proto_gets_the_python_clients_embedding(demo_server, tmp_path):
    photos = encoded_photos("JPEG")
    files = []
    for name in ("chelsea", "rocket"):
        files.append(tmp_path / f"{name}.jpg")
        files[-1].write_bytes(photos[name])

    answer = _node_embed(demo_server.target, "alexnet", files)
    with FeaturizerClient(demo_server.target) as client:
        expected = client.embed([f.read_bytes() for f in files], model="alexnet")

    assert (answer["model"], answer["version"], answer["dtype"]) == ("alexnet", 1, "DTYPE_FLOAT32")
    assert [int(d) for d in answer["shape"]] == list(expected.shape)
    node_rows = np.frombuffer(base64.b64decode(answer["data"]), "<f4").reshape(expected.shape)
    assert np.abs(node_rows - expected).max() <= 1e-5
    assert np.abs(node_rows[0] - node_rows[1]).max() > 1e-3  # two photos, two different rows


def test_node_client_sees_the_status_code_and_message(demo_server, tmp_path):
    image = tmp_path / "cat.jpg"
    image.write_bytes(encoded_photos("JPEG")["chelsea"])
    node = shutil.which("node")
    done = subprocess.run([node, str(NODE_DIR / "embed.js"), demo_server.target, "no-such-model", str(image)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    error = json.loads(done.stdout)["error"]
    assert error["code"] == 5 and "no-such-model" in error["details"]  # 5 = NOT_FOUND in every gRPC language
