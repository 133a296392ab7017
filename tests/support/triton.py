"""tritonclient from PyPI, in a venv of its own, driving a real featurizer server.

The server imports ``featurizer_client.v2``, whose proto package (``inference``) is the one
tritonclient registers too, so the two cannot share a process: ``triton_python()`` builds ``.venv-triton`` (gitignored) once and reuses it while
its pin file matches. Calls run as plans of ``triton_driver.py`` under that venv's python.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-triton"
REQUIREMENT = "tritonclient[grpc,http]==2.73.0"
DRIVER = Path(__file__).with_name("triton_driver.py")
BUILD_TIMEOUT_S = 900
CALL_TIMEOUT_S = 240


def triton_python() -> Path:
    """The python of a venv holding ``REQUIREMENT``, built on first use (a lock keeps parallel
    sessions from building it twice)."""
    python = VENV / "bin" / "python"
    pin = VENV / "featurizer-requirement.txt"
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(Path(tempfile.gettempdir()) / "featurizer-venv-triton.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if python.exists() and pin.exists() and pin.read_text().strip() == REQUIREMENT:
            return python
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True, timeout=BUILD_TIMEOUT_S)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", REQUIREMENT], check=True,
                       timeout=BUILD_TIMEOUT_S)
        pin.write_text(REQUIREMENT + "\n")
    return python


class Triton:
    """One tritonclient (``grpc`` or ``http``) against ``url``; ``run`` sends a list of calls."""

    def __init__(self, python: Path, protocol: str, url: str, scratch: Path, token: Optional[str] = None) -> None:
        self.python, self.protocol, self.url, self.token = python, protocol, url, token
        self.scratch = scratch
        scratch.mkdir(parents=True, exist_ok=True)
        self._names = itertools.count()

    def run(self, *calls: dict, token: Optional[str] = "default") -> list[dict]:
        plan = {"protocol": self.protocol, "url": self.url, "calls": list(calls),
                "token": self.token if token == "default" else token}
        path = self.scratch / f"plan-{next(self._names)}.json"
        path.write_text(json.dumps(plan))
        done = subprocess.run([str(self.python), str(DRIVER), str(path)], capture_output=True, text=True,
                              timeout=CALL_TIMEOUT_S)
        assert done.returncode == 0, f"tritonclient driver failed:\n{done.stderr[-3000:]}"
        return json.loads(done.stdout)["results"]

    def one(self, call: dict, **kwargs: Any) -> dict:
        return self.run(call, **kwargs)[0]

    # ----- building calls ------------------------------------------------------------------
    def array_input(self, name: str, datatype: str, array: np.ndarray) -> dict:
        path = self.scratch / f"in-{next(self._names)}.npy"
        np.save(path, array)
        return {"name": name, "datatype": datatype, "npy": str(path)}

    def files_input(self, images: Sequence[bytes], name: str = "images", shape: Optional[list[int]] = None) -> dict:
        paths = []
        for data in images:
            path = self.scratch / f"file-{next(self._names)}.bin"
            path.write_bytes(data)
            paths.append(str(path))
        return {"name": name, "datatype": "BYTES", "files": paths, "shape": shape or [len(paths)]}

    def infer(self, model: str, *inputs: dict, version: str = "", outputs: Optional[list[str]] = None,
              parameters: Optional[dict] = None) -> dict:
        call = {"op": "infer", "model": model, "version": version, "inputs": list(inputs),
                "save": str(self.scratch / f"out-{next(self._names)}")}
        if outputs is not None:
            call["outputs"] = outputs
        if parameters is not None:
            call["parameters"] = parameters
        return call

    def output(self, call: dict, name: str) -> np.ndarray:
        """A numeric output the driver saved for ``call``."""
        return np.load(f"{call['save']}_{name}.npy")


# ----- what both v2 test modules compare against: featurizer.v1 on the same server ----------------
HEAD_LABELS = ("cat", "cup", "rocket")
TOLERANCE = 1e-5


def publish_oip_models(root: Path) -> None:
    """Beside the demo's alexnet: a head on it (``objects``) and a 10-class LargeNet classifier."""
    from tests.support.registries import publish_feature_head, publish_largenet

    publish_feature_head(root, "objects", labels=HEAD_LABELS, seed=3)
    publish_largenet(root, "largenet10", num_classes=10, labels=tuple(f"class{i}" for i in range(10)), seed=4)


def v1_images(images: Sequence[Any]) -> list:
    """featurizer.v1 Image messages: bytes as encoded files, arrays as raw tensors."""
    from featurizer_client.tensors import to_proto
    from featurizer_client.v1 import featurizer_pb2 as pb

    return [pb.Image(encoded=i) if isinstance(i, bytes) else pb.Image(tensor=to_proto(np.ascontiguousarray(i)))
            for i in images]


def v1_embed(target: str, model: str, images: Sequence[Any]) -> np.ndarray:
    from tests.support.rpc import embed, featurizer_stub

    with featurizer_stub(target) as stub:
        return embed(stub, model, v1_images(images))[1]


def v1_predict(target: str, model: str, images: Sequence[Any], top_k: int = 0):
    """featurizer.v1 Predict -> (probabilities [N, classes] filled from the top-k, labels [N][k])."""
    from featurizer_client.v1 import featurizer_pb2 as pb
    from tests.support.rpc import TIMEOUT_S, featurizer_stub

    with featurizer_stub(target) as stub:
        response = stub.Predict(pb.PredictRequest(model=model, images=v1_images(images), top_k=top_k),
                                timeout=TIMEOUT_S)
    return response.predictions


def v1_error(target: str, model: str, images: Sequence[Any]) -> tuple[str, str]:
    """(status name, message) of a featurizer.v1 Embed expected to fail."""
    import grpc

    from tests.support.rpc import embed, featurizer_stub

    with featurizer_stub(target) as stub:
        try:
            embed(stub, model, v1_images(images))
        except grpc.RpcError as error:
            return error.code().name, error.details()
    raise AssertionError("featurizer.v1 Embed succeeded")
