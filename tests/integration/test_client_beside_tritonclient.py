"""featurizer-client and tritonclient in one venv, and in one Python process, against one server.

tritonclient 2.73 pins protobuf < 7, so an application holding both SDKs runs protobuf 6.3x: the
client's stubs are generated with gencode old enough for it (protos/generate.py) and its pins
allow 6.31-7.x. The venv is built once at ``.venv-client-triton/`` (gitignored) and reused
while its requirements are unchanged; the client is installed editable, so it runs this
checkout's code. ``tests/integration/test_client_venv.py`` covers the protobuf 7 side (a venv
with the client alone resolves to the newest protobuf).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tests.support.images import encoded_photos
from tests.support.reference import reference_features, torchvision_alexnet
from tests.support.servers import running_server

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "client"
VENV = ROOT / ".venv-client-triton"
TRITONCLIENT = "tritonclient[grpc,http]==2.73.0"
BUILD_TIMEOUT_S = 900
TOLERANCE = 1e-4  # against torchvision's own AlexNet, as tests/integration/test_foundation.py

# One process: the SDK first, then both tritonclients; every call goes to the same server.
SCRIPT = """
import json, sys
import numpy as np
import featurizer_client
from featurizer_client import FeaturizerClient
import tritonclient.grpc as tc_grpc
import tritonclient.http as tc_http
import google.protobuf

grpc_target, http_target, out, *paths = sys.argv[1:]
jpegs = [open(p, "rb").read() for p in paths]
with FeaturizerClient(grpc_target) as client:
    health = client.health()
    v1 = client.embed(jpegs, model="alexnet")

def embeddings(tc, url):
    images = tc.InferInput("images", [len(jpegs)], "BYTES")
    images.set_data_from_numpy(np.array(jpegs, dtype=np.object_))
    return tc.InferenceServerClient(url).infer("alexnet", [images]).as_numpy("embeddings")

np.savez(out, v1=v1, v2_grpc=embeddings(tc_grpc, grpc_target), v2_http=embeddings(tc_http, http_target))
print(json.dumps({"protobuf": google.protobuf.__version__, "health": health, "torch": "torch" in sys.modules,
                  "v2_stubs_imported": "featurizer_client.v2" in sys.modules}))
"""


def _stamp() -> str:
    """What the venv was built from: rebuilt when tritonclient's pin or the client's requirements change."""
    return f"{TRITONCLIENT} + featurizer-client {hashlib.sha256((CLIENT / 'pyproject.toml').read_bytes()).hexdigest()}"


def _pip(python: Path, *args: str, timeout: float = BUILD_TIMEOUT_S) -> subprocess.CompletedProcess:
    """This interpreter's pip acting on the venv (``--python``): no second pip to bootstrap."""
    return subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def python() -> Path:
    """The venv's python, built on first use (a lock keeps parallel sessions from building it twice)."""
    python, stamp = VENV / "bin" / "python", VENV / "featurizer-stamp.txt"
    with open(Path(tempfile.gettempdir()) / "featurizer-venv-client-triton.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (python.exists() and stamp.exists() and stamp.read_text().strip() == _stamp()):
            subprocess.run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(VENV)], check=True,
                           timeout=120)
            done = _pip(python, "install", "-q", "-e", str(CLIENT), TRITONCLIENT)  # one resolve for both
            assert done.returncode == 0, done.stderr[-3000:]
            stamp.write_text(_stamp() + "\n")
    return python


@pytest.fixture(scope="module")
def server(demo_registry_template):
    with running_server(demo_registry_template, http_port=0) as handle:
        yield handle


@pytest.mark.slow  # builds a venv from PyPI on first use
def test_requirements_resolve_together_on_protobuf_6(python):
    check = _pip(python, "check", timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    versions = subprocess.run([str(python), "-c", "import google.protobuf, grpc; print(google.protobuf.__version__, "
                               "grpc.__version__)"], capture_output=True, text=True, timeout=60, check=True)
    protobuf, _ = versions.stdout.split()
    assert protobuf.split(".")[0] == "6", versions.stdout  # what tritonclient's pin leaves


@pytest.mark.slow
def test_both_sdks_in_one_process_embed_the_same_rows(python, server, tmp_path):
    jpegs = encoded_photos("JPEG")
    names = ["chelsea", "rocket", "coffee"]
    paths = []
    for name in names:
        paths.append(tmp_path / f"{name}.jpg")
        paths[-1].write_bytes(jpegs[name])
    out = tmp_path / "rows.npz"
    done = subprocess.run([str(python), "-c", SCRIPT, server.target, f"127.0.0.1:{server.server.http_port}", str(out),
                           *map(str, paths)], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["protobuf"].startswith("6.") and facts["health"] == "SERVING"
    assert facts["torch"] is False and facts["v2_stubs_imported"] is False
    rows = np.load(out)
    reference = torchvision_alexnet()
    for sdk in ("v1", "v2_grpc", "v2_http"):
        assert rows[sdk].shape == (len(names), 9216), sdk
        for i, name in enumerate(names):  # row i belongs to image i, whichever SDK asked
            assert np.abs(rows[sdk][i] - reference_features(reference, jpegs[name])).max() <= TOLERANCE, (sdk, name)
