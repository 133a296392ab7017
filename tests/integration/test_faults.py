"""Registry faults while traffic runs, and registry paths that try to leave the root.

Damaged versions become FAILED with a reason an operator can act on (and no server path in it);
callers of the models that are still valid see zero errors throughout.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
from featurizer_client.tensors import to_proto
from featurizer_client.v1 import featurizer_pb2 as pb
from featurizer_client.v1 import featurizer_pb2_grpc as pb_grpc
from safetensors.torch import save_file

from featurizer.registry.registry import Registry
from tests.support.bad_inputs import leaks
from tests.support.registries import publish_largenet
from tests.support.servers import running_server
from tests.support.traffic import running_traffic

WEIGHTS = "weights.safetensors"
DAMAGED = ("truncated", "rehashed", "weights-dir", "dangling", "bad-json")


def image(seed: int) -> pb.Image:
    return pb.Image(tensor=to_proto(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)))


@pytest.fixture
def registry(tmp_path) -> Path:
    root = tmp_path / "registry"
    for name in ("stable", "victim", *DAMAGED):
        publish_largenet(root, name, version=1)
    publish_largenet(root, "victim", version=2)  # same weights as victim@1: answers must not change
    return root


def version_info(stub, model: str, version: int) -> pb.ModelVersionInfo:
    return {v.version: v for v in stub.GetModel(pb.GetModelRequest(model=model), timeout=30).versions}[version]


def damage(root: Path) -> dict[str, str]:
    """Break one version per fault kind in place; returns model -> the reason GetModel must give."""
    (root / "truncated/1" / WEIGHTS).write_bytes((root / "truncated/1" / WEIGHTS).read_bytes()[:100])
    state = {k: v + 1 for k, v in Registry(root).load_weights("rehashed", 1, Registry(root).manifest("rehashed", 1)).items()}
    save_file(state, str(root / "rehashed/1" / WEIGHTS))  # valid weights, different bytes, old sha256
    (root / "weights-dir/1" / WEIGHTS).unlink()
    (root / "weights-dir/1" / WEIGHTS).mkdir()  # tests run as root: chmod 000 would not stop a read
    (root / "dangling/1" / WEIGHTS).unlink()
    (root / "dangling/1" / WEIGHTS).symlink_to(root / "dangling/1/gone.safetensors")
    (root / "bad-json/1/model.json").write_text('{"kind": "features", ')
    return {"truncated": "sha256 mismatch", "rehashed": "sha256 mismatch", "weights-dir": "unreadable",
            "dangling": "unreadable", "bad-json": "model.json"}


def test_registry_faults_while_traffic_runs(registry):
    good = [pb.PredictRequest(model="stable", images=[image(i)]) for i in range(4)] + \
           [pb.PredictRequest(model="victim", images=[image(10 + i)]) for i in range(4)]
    with running_server(registry) as server, grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.FeaturizerStub(channel)
        with running_traffic(server.target, good, callers=8) as traffic:
            assert traffic.wait_for_more()
            shutil.rmtree(registry / "victim/2")  # a version deleted
            reasons = damage(registry)
            server.reload()
            assert traffic.wait_for_more()
            moved = registry.with_name("registry-away")  # the whole registry briefly missing
            registry.rename(moved)
            server.reload()
            assert traffic.wait_for_more()
            assert stub.GetModel(pb.GetModelRequest(model="stable"), timeout=30).versions[0].state == pb.MODEL_STATE_AVAILABLE
            moved.rename(registry)
            server.reload()
            assert traffic.wait_for_more()
        print(f"\nfaults: {len(reasons) + 2} registry faults under traffic; 8 callers made {sum(traffic.calls)} "
              f"calls, {len(traffic.errors)} errors")
        assert traffic.errors == []
        assert min(traffic.calls) > 0, traffic.calls

        assert [v.version for v in stub.GetModel(pb.GetModelRequest(model="victim"), timeout=30).versions] == [1]
        for model, reason in reasons.items():
            info = version_info(stub, model, 1)
            assert info.state == pb.MODEL_STATE_FAILED, model
            assert reason in info.reason, (model, info.reason)
            assert not leaks(info.reason, registry), info.reason
            with pytest.raises(grpc.RpcError) as failed:
                stub.Predict(pb.PredictRequest(model=model, version=1, images=[image(0)]), timeout=30)
            assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert f"model {model} version 1 FAILED to load" in failed.value.details()
        assert server.sample("featurizer_requests_total", method="Predict", model="stable", code="OK") >= sum(traffic.calls[:4])


def test_names_and_symlinks_cannot_leave_the_registry_root(registry, tmp_path):
    outside = tmp_path / "outside"
    publish_largenet(outside, "largenet", version=1)
    os.symlink(outside / "largenet", registry / "escaped-model")            # a model directory
    (registry / "escaped-version").mkdir()
    os.symlink(outside / "largenet/1", registry / "escaped-version/1")      # a version directory
    (registry / "stable/1" / WEIGHTS).unlink()
    os.symlink(outside / "largenet/1" / WEIGHTS, registry / "stable/1" / WEIGHTS)  # a weights file, same sha256
    with running_server(registry) as server, grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.FeaturizerStub(channel)
        for model in ("escaped-model", "escaped-version", "stable"):
            info = version_info(stub, model, 1)
            assert info.state == pb.MODEL_STATE_FAILED, model
            assert "outside the registry root" in info.reason and not leaks(info.reason, registry), info.reason
        for name in ("../outside/largenet", str(outside / "largenet"), "escaped-model/../../outside"):
            with pytest.raises(grpc.RpcError) as missing:
                stub.Predict(pb.PredictRequest(model=name, images=[image(0)]), timeout=30)
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND, name
        assert stub.Predict(pb.PredictRequest(model="victim", images=[image(0)]), timeout=30).predictions
