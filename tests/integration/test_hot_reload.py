"""Hot reload while serving: new versions under load with zero failed calls, corrupt versions FAILED
while the old one serves, alias changes, removals draining in-flight calls."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable

import grpc
import numpy as np
import pytest
import torch
from featurizer_client.v1 import featurizer_pb2 as pb

from featurizer.architectures.alexnet import ALEXNET_LAYERS
from featurizer.cli import main as featurizer_cli
from tests.support.images import photos
from tests.support.reference import preset_tensor, torchvision_alexnet
from tests.support.registries import publish_alexnet, publish_corrupt_alexnet, publish_feature_head
from tests.support.rpc import embed, featurizer_stub, tensor_images, versions_by_number
from tests.support.servers import ServerProcess, running_server
from tests.support.test_builders import GATES, Gate, publish_test_model

CLIENTS = 8
POLL_S = 0.3
LAYER = "conv2"
DEADLINE_S = 90.0
TOLERANCE = 1e-4


def reference_rows(image: np.ndarray, seeds: tuple[int, ...]) -> dict[int, np.ndarray]:
    """version -> torchvision's avg-pooled conv2 output for the weights seeded ``seeds[version-1]``."""
    x = preset_tensor(image)
    out = {}
    for version, seed in enumerate(seeds, start=1):
        with torch.inference_mode():
            fmap = torchvision_alexnet(seed).features[: ALEXNET_LAYERS[LAYER] + 1](x)
        out[version] = fmap.mean(dim=(2, 3))[0].numpy()
    return out


def wait_until(condition: Callable[[], bool], what: str, proc: ServerProcess) -> float:
    """Poll an external server process for ``condition``; returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        assert proc.proc.poll() is None, f"server exited while waiting for {what}"
        assert time.monotonic() - started < DEADLINE_S, f"timed out waiting for {what}"
        time.sleep(0.05)
    return time.monotonic() - started


class CallingClients:
    """CLIENTS threads calling Embed in a loop; every answer is checked against the reference of the
    version it reports."""

    def __init__(self, target: str, image: np.ndarray, expected: dict[int, np.ndarray]) -> None:
        self.target, self.image, self.expected = target, image, expected
        self.stop = threading.Event()
        self.seen = {v: threading.Event() for v in expected}
        self.failures: list[str] = []
        self.calls: list[int] = [0] * CLIENTS
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(CLIENTS)]

    def _loop(self, index: int) -> None:
        with featurizer_stub(self.target) as stub:
            images = tensor_images([self.image])
            while not self.stop.is_set():
                try:
                    response, rows = embed(stub, "alexnet", images, pooling=pb.POOLING_AVG)
                    if np.abs(rows[0] - self.expected[response.version]).max() > TOLERANCE:
                        self.failures.append(f"version {response.version}: wrong row")
                    self.seen[response.version].set()
                except Exception as error:  # any failed call fails the test
                    self.failures.append(repr(error))
                self.calls[index] += 1

    def __enter__(self) -> "CallingClients":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


def version_state(target: str, model: str, version: int) -> tuple[int, str]:
    with featurizer_stub(target) as stub:
        info = stub.GetModel(pb.GetModelRequest(model=model), timeout=10)
    found = versions_by_number(info).get(version)
    return (found.state, found.reason) if found else (pb.MODEL_STATE_UNSPECIFIED, "")


def served_version(target: str, model: str, image: list[pb.Image]) -> int:
    """The version that answers ``model`` (0 while the server does not know the name yet)."""
    with featurizer_stub(target) as stub:
        try:
            return embed(stub, model, image)[0].version
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return 0


def test_publish_under_load_then_corrupt_version_then_alias_and_removal(tmp_path, capsys):
    root = tmp_path / "registry"
    image = photos()["chelsea"]
    publish_alexnet(root, "alexnet", layer=LAYER, seed=0)
    expected = reference_rows(image, seeds=(0, 1))
    proc = ServerProcess(root, "--poll-interval", str(POLL_S), "--log-level", "warning")
    try:
        with CallingClients(proc.target, image, expected) as clients:
            assert clients.seen[1].wait(DEADLINE_S)
            publish_alexnet(root, "alexnet", layer=LAYER, seed=1)
            published = time.monotonic()  # the rename into place
            assert clients.seen[2].wait(DEADLINE_S), clients.failures[:3]
            lag = time.monotonic() - published

            bad_file = publish_corrupt_alexnet(root, "alexnet", 3, tmp_path / "scratch", layer=LAYER, seed=2)
            wait_until(lambda: version_state(proc.target, "alexnet", 3)[0] == pb.MODEL_STATE_FAILED,
                       "version 3 FAILED", proc)
            calls_then = sum(clients.calls)
            wait_until(lambda: sum(clients.calls) >= calls_then + CLIENTS, "more calls after the failure", proc)
        state, reason = version_state(proc.target, "alexnet", 3)
        assert "sha256 mismatch" in reason and "alexnet/3/weights.safetensors" in reason
        assert clients.failures == []
        assert served_version(proc.target, "alexnet", tensor_images([image])) == 2  # the old one keeps serving
        with capsys.disabled():
            print(f"\nversion 2 served {lag:.2f} s after publishing (poll interval {POLL_S} s, {CLIENTS} "
                  f"clients calling); {sum(clients.calls)} calls, 0 failed")

        capsys.readouterr()
        assert featurizer_cli(["registry", "verify", str(root)]) == 1
        assert str(bad_file) in capsys.readouterr().err

        small = tensor_images([image[:64, :64]])
        for target in ("alexnet@1", "alexnet@2"):
            assert featurizer_cli(["registry", "alias", str(root), "prod", target]) == 0
            want = int(target[-1])
            wait_until(lambda: served_version(proc.target, "prod", small) == want, f"prod -> {target}", proc)

        (root / "alexnet" / "1").rename(tmp_path / "removed")  # atomic removal, as an operator would
        wait_until(lambda: version_state(proc.target, "alexnet", 1)[0] == pb.MODEL_STATE_UNSPECIFIED,
                   "version 1 gone", proc)
        with featurizer_stub(proc.target) as stub, pytest.raises(grpc.RpcError) as gone:
            embed(stub, "alexnet", small, version=1)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND and "version 1" in gone.value.details()
    finally:
        proc.kill()


def test_removed_version_unloads_after_its_call_in_flight_finishes(tmp_path):
    root = tmp_path / "registry"
    publish_test_model(root, "gated", "test_gated", {"gate": "drain"}, version=1)
    publish_test_model(root, "gated", "test_gated", {"gate": "never-installed"}, version=2)
    image = tensor_images([photos()["coffee"]])
    with running_server(root) as server:
        gate = GATES["drain"] = Gate()
        try:
            with featurizer_stub(server.target) as stub:
                in_flight = stub.Embed.future(pb.EmbedRequest(model="gated", version=1, images=image), timeout=60)
                assert gate.entered.wait(30)
                shutil.rmtree(root / "gated" / "1")
                server.reload()
                info = versions_by_number(stub.GetModel(pb.GetModelRequest(model="gated"), timeout=10))
                assert info[1].state == pb.MODEL_STATE_UNLOADING and info[2].state == pb.MODEL_STATE_AVAILABLE
                assert info[1].reason.startswith("removed from the registry")
                with pytest.raises(grpc.RpcError) as refused:
                    embed(stub, "gated", image, version=1)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and "UNLOADING" in refused.value.details()
                assert server.sample("featurizer_model_state", model="gated", version="1", state="UNLOADING") == 1

                gate.release.set()
                finished = in_flight.result()
                server.call(server.server.manager.wait_unloaded())
                info = versions_by_number(stub.GetModel(pb.GetModelRequest(model="gated"), timeout=10))
                after, rows = embed(stub, "gated", image)
        finally:
            GATES.pop("drain", None)
            gate.release.set()
        assert finished.version == 1 and sorted(info) == [2]
        assert server.metrics.get_sample_value(
            "featurizer_model_state", {"model": "gated", "version": "1", "state": "UNLOADING"}) is None
        assert after.version == 2
        got = np.frombuffer(finished.embeddings.data, np.float32).reshape(tuple(finished.embeddings.shape))
        assert np.abs(got - rows).max() <= TOLERANCE  # the drained call got a full, correct answer


def test_head_stops_with_its_removed_backbone_and_returns_with_it(tmp_path):
    root = tmp_path / "registry"
    publish_alexnet(root, "backbone", layer="conv1")
    publish_feature_head(root, "head", backbone="backbone", in_features=64, labels=("a", "b"))
    image = tensor_images([photos()["coffee"]])
    request = pb.PredictRequest(model="head", images=image)
    with running_server(root) as server, featurizer_stub(server.target) as stub:
        before = stub.Predict(request, timeout=60)
        (root / "backbone" / "1").rename(tmp_path / "away")
        server.reload()
        server.call(server.server.manager.wait_unloaded())
        head = versions_by_number(stub.GetModel(pb.GetModelRequest(model="head"), timeout=10))[1]
        assert head.state == pb.MODEL_STATE_FAILED and head.reason == "backbone backbone@1 is not AVAILABLE"
        with pytest.raises(grpc.RpcError) as stopped:
            stub.Predict(request, timeout=60)
        assert stopped.value.code() == grpc.StatusCode.UNAVAILABLE and "backbone backbone@1" in stopped.value.details()

        (tmp_path / "away").rename(root / "backbone" / "1")
        server.reload()
        after = stub.Predict(request, timeout=60)
    assert [c.probability for c in after.predictions[0].classes] == [c.probability for c in before.predictions[0].classes]


def test_a_version_is_loading_until_its_warm_up_finishes(tmp_path):
    root = tmp_path / "registry"
    publish_test_model(root, "slow", "test_gated", {"gate": "warm-up"}, version=1)
    image = tensor_images([photos()["coffee"]])
    with running_server(root) as server, featurizer_stub(server.target) as stub:
        publish_test_model(root, "slow", "test_gated", {"gate": "warm-up"}, version=2)
        gate = GATES["warm-up"] = Gate()
        try:
            reload = server.submit(server.server.reload())
            assert gate.entered.wait(30)  # version 2's warm-up pass is on the device now
            info = versions_by_number(stub.GetModel(pb.GetModelRequest(model="slow"), timeout=10))
            assert info[2].state == pb.MODEL_STATE_LOADING and info[1].state == pb.MODEL_STATE_AVAILABLE
            with pytest.raises(grpc.RpcError) as loading:
                embed(stub, "slow", image, version=2)
            assert loading.value.code() == grpc.StatusCode.UNAVAILABLE and "LOADING" in loading.value.details()
        finally:
            GATES.pop("warm-up", None)
            gate.release.set()
        reload.result(60)
        info = versions_by_number(stub.GetModel(pb.GetModelRequest(model="slow"), timeout=10))
        assert info[2].state == pb.MODEL_STATE_AVAILABLE and list(info[2].output_shape) == [3]
        assert embed(stub, "slow", image)[0].version == 2
