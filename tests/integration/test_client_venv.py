"""``pip install ./client`` into a fresh venv gives a working SDK and CLI, without torch.

The venv is made without pip (``--without-pip``) and filled by this interpreter's pip through
``pip --python``: the same install, half the time of bootstrapping a second pip.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from featurizer_client import FeaturizerClient
from tests.support.registries import publish_largenet
from tests.support.servers import running_server

CLIENT = Path(__file__).resolve().parents[2] / "client"
SCRIPT = """
import sys
import numpy as np
from featurizer_client import FeaturizerClient
images = np.random.default_rng(7).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
with FeaturizerClient(sys.argv[1]) as client:
    X = client.embed(images, model="largenet", batch_size=8)
    try:
        client.embed(images[:1], model="largenet", progress=True)
    except ImportError as error:  # tqdm is an optional extra, not installed here
        assert "featurizer-client[progress]" in str(error), error
    else:
        raise AssertionError("progress=True without tqdm should say which extra to install")
np.save(sys.argv[2], X)
print("torch" in sys.modules)
"""


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("client-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(root / "bin" / "python"), "install", "-q",
                    "--disable-pip-version-check", str(CLIENT)], check=True, timeout=600, capture_output=True)
    return root


@pytest.mark.slow  # pip install from PyPI
def test_client_installs_and_embeds_without_torch(venv, tmp_path):
    registry = tmp_path / "registry"
    publish_largenet(registry, "largenet", num_classes=4, labels=("a", "b", "c", "d"), seed=9)
    python = str(venv / "bin" / "python")
    no_torch = subprocess.run([python, "-c", "import torch"], capture_output=True, text=True, timeout=60)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    # Alone, the client resolves to protobuf 7: its 6.31 gencode runs there too (protobuf 6 beside
    # tritonclient: tests/integration/test_client_beside_tritonclient.py).
    protobuf = subprocess.run([python, "-c", "import google.protobuf; print(google.protobuf.__version__)"],
                              capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    assert protobuf.split(".")[0] == "7", protobuf
    out = tmp_path / "x.npy"
    with running_server(registry) as server:
        done = subprocess.run([python, "-c", SCRIPT, server.target, str(out)], capture_output=True, text=True,
                              timeout=120)
        health = subprocess.run([str(venv / "bin" / "featurizer-client"), "health", "--target", server.target],
                                capture_output=True, text=True, timeout=60)
        with FeaturizerClient(server.target) as client:
            expected = client.embed(np.random.default_rng(7).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
                                    model="largenet", batch_size=8)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"  # the SDK never imported torch
    assert np.abs(np.load(out) - expected).max() <= 1e-6
    assert (health.returncode, health.stdout.strip()) == (0, "SERVING")
