"""Every metric family, read with ``get_sample_value`` from one server's own registry
after traffic whose effect is known (successes, bad requests, overload, a caller that gave up).

The server is shared by the tests of this module, so each test compares before/after values.

Clients are built with ``retry=None``: one call is one RPC, so the expected counts are exact.
"""

from __future__ import annotations

import platform
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

import featurizer
from featurizer_client import FeaturizerClient, FeaturizerError
from featurizer_client.inputs import to_image
from featurizer_client.v1 import featurizer_pb2 as pb
from featurizer_client.v1 import featurizer_pb2_grpc as pb_grpc
from tests.support.registries import publish_largenet
from tests.support.servers import running_server
from tests.support.test_builders import GATES, Gate, publish_test_model

MAX_QUEUE = 4
GATE = "test-metrics"


def tiny_images(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(count)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """largenet (fast), a version whose weights were tampered with, and a gated test model."""
    root: Path = tmp_path_factory.mktemp("metrics-registry")
    publish_largenet(root, "largenet")
    publish_largenet(root, "broken")
    weights = root / "broken" / "1" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")  # sha256 no longer matches
    publish_test_model(root, "gated", "test_gated", {"gate": GATE})
    with running_server(root, max_queue=MAX_QUEUE) as handle:
        yield handle


class Snapshot:
    """Sample values at one moment, so a test can assert what its own traffic added."""

    def __init__(self, server) -> None:
        self.server = server
        self.values = {}

    def __call__(self, name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        self.values.setdefault(key, self.server.sample(name, **labels))
        return self.values[key]

    def delta(self, name: str, **labels: str) -> float:
        return self.server.sample(name, **labels) - self(name, **labels)


def take_snapshot(server, *series: tuple[str, dict]) -> Snapshot:
    snap = Snapshot(server)
    for name, labels in series:
        snap(name, **labels)
    return snap


EMBED_LARGENET = {"method": "Embed", "model": "largenet"}
PREDICT_LARGENET = {"method": "Predict", "model": "largenet"}
LARGENET = {"model": "largenet"}


def test_requests_images_and_batch_series_follow_the_traffic(server):
    series = [("featurizer_requests_total", {**EMBED_LARGENET, "code": "OK"}),
              ("featurizer_requests_total", {**EMBED_LARGENET, "code": "INVALID_ARGUMENT"}),
              ("featurizer_requests_total", {**PREDICT_LARGENET, "code": "OK"}),
              ("featurizer_requests_total", {"method": "Embed", "model": "unknown", "code": "NOT_FOUND"}),
              ("featurizer_request_duration_seconds_count", EMBED_LARGENET),
              ("featurizer_request_duration_seconds_count", PREDICT_LARGENET),
              ("featurizer_images_total", LARGENET),
              ("featurizer_preprocess_seconds_count", LARGENET),
              ("featurizer_queue_wait_seconds_count", LARGENET),
              ("featurizer_batch_size_count", LARGENET),
              ("featurizer_batch_size_sum", LARGENET),
              ("featurizer_inference_seconds_count", {**LARGENET, "device": "cpu"})]
    before = take_snapshot(server, *series)
    with FeaturizerClient(server.target, retry=None) as client:
        client.embed(tiny_images(3), model="largenet")
        client.embed(tiny_images(2, seed=1), model="largenet")
        with pytest.raises(FeaturizerError) as bad:
            client.embed([b"not an image"], model="largenet")
        assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(FeaturizerError) as missing:
            client.embed(tiny_images(1), model="no-such-model")
        assert missing.value.code == grpc.StatusCode.NOT_FOUND
    with grpc.insecure_channel(server.target) as channel:
        request = pb.PredictRequest(model="largenet", images=[to_image(a) for a in tiny_images(4, seed=2)])
        pb_grpc.FeaturizerStub(channel).Predict(request, timeout=30)

    assert before.delta("featurizer_requests_total", **EMBED_LARGENET, code="OK") == 2
    assert before.delta("featurizer_requests_total", **EMBED_LARGENET, code="INVALID_ARGUMENT") == 1
    assert before.delta("featurizer_requests_total", **PREDICT_LARGENET, code="OK") == 1
    # an unknown name is folded into "unknown": a caller cannot grow the label set
    assert before.delta("featurizer_requests_total", method="Embed", model="unknown", code="NOT_FOUND") == 1
    assert server.metrics.get_sample_value("featurizer_requests_total",
                                           {"protocol": "featurizer.v1", "method": "Embed", "model": "no-such-model",
                                            "code": "NOT_FOUND"}) is None
    assert before.delta("featurizer_request_duration_seconds_count", **EMBED_LARGENET) == 3
    assert before.delta("featurizer_request_duration_seconds_count", **PREDICT_LARGENET) == 1
    served = 3 + 2 + 4  # the failed request's image is not served
    assert before.delta("featurizer_images_total", **LARGENET) == served
    assert before.delta("featurizer_preprocess_seconds_count", **LARGENET) == 3  # one per request that decoded
    assert before.delta("featurizer_queue_wait_seconds_count", **LARGENET) == served  # one per image
    # sequential requests: each request's images form one forward pass
    assert before.delta("featurizer_batch_size_count", **LARGENET) == 3
    assert before.delta("featurizer_batch_size_sum", **LARGENET) == served
    assert before.delta("featurizer_inference_seconds_count", **LARGENET, device="cpu") == 3
    assert server.sample("featurizer_queue_depth", **LARGENET) == 0


def test_overload_is_refused_and_counted_as_dropped(server):
    before = take_snapshot(server, ("featurizer_dropped_total", {**LARGENET, "reason": "overload"}),
                           ("featurizer_requests_total", {**EMBED_LARGENET, "code": "RESOURCE_EXHAUSTED"}),
                           ("featurizer_batch_size_count", LARGENET))
    with FeaturizerClient(server.target, retry=None) as client:
        with pytest.raises(FeaturizerError) as refused:
            client.embed(tiny_images(MAX_QUEUE + 1), model="largenet")
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert before.delta("featurizer_dropped_total", **LARGENET, reason="overload") == MAX_QUEUE + 1
    assert before.delta("featurizer_requests_total", **EMBED_LARGENET, code="RESOURCE_EXHAUSTED") == 1
    assert before.delta("featurizer_batch_size_count", **LARGENET) == 0


def test_queue_depth_and_the_images_of_a_caller_that_gave_up(server):
    """While a forward pass is held, a second caller queues, times out and is dropped, not computed."""
    gated = {"model": "gated"}
    before = take_snapshot(server, ("featurizer_dropped_total", {**gated, "reason": "cancelled"}),
                           ("featurizer_dropped_total", {**gated, "reason": "deadline"}),
                           ("featurizer_batch_size_sum", gated))
    gate = GATES[GATE] = Gate()
    try:
        with FeaturizerClient(server.target, retry=None) as client, ThreadPoolExecutor(1) as pool:
            holding = pool.submit(client.embed, tiny_images(1), model="gated")
            assert gate.entered.wait(30)
            with pytest.raises(FeaturizerError) as gave_up:
                client.embed(tiny_images(1, seed=1), model="gated", timeout=0.5)
            assert gave_up.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert server.sample("featurizer_queue_depth", **gated) == 1  # still queued behind the held pass
            gate.release.set()
            holding.result(30)
            client.embed(tiny_images(1, seed=2), model="gated")  # FIFO: the given-up item was taken first
    finally:
        GATES.pop(GATE, None)
    dropped = (before.delta("featurizer_dropped_total", **gated, reason="cancelled")
               + before.delta("featurizer_dropped_total", **gated, reason="deadline"))
    assert dropped == 1
    assert gate.calls == 2 and before.delta("featurizer_batch_size_sum", **gated) == 2
    assert server.sample("featurizer_queue_depth", **gated) == 0


def test_model_states_and_load_failures(server):
    def state(model: str, value: str) -> float:
        return server.sample("featurizer_model_state", model=model, version="1", state=value)

    assert state("largenet", "AVAILABLE") == 1 and state("largenet", "LOADING") == 0
    assert state("broken", "FAILED") == 1 and state("broken", "AVAILABLE") == 0
    assert server.sample("featurizer_model_load_failures_total", model="broken") == 1
    assert server.sample("featurizer_model_load_failures_total", model="largenet") == 0


def test_build_info_and_process_metrics(server):
    labels = {"version": featurizer.__version__, "torch": torch.__version__, "device": "cpu"}
    assert server.sample("featurizer_build_info", **labels) == 1
    assert server.metrics.get_sample_value("process_cpu_seconds_total") > 0
    assert server.metrics.get_sample_value("process_resident_memory_bytes") > 0
    python = {"implementation": platform.python_implementation(), "major": str(sys.version_info.major),
              "minor": str(sys.version_info.minor), "patchlevel": str(sys.version_info.micro),
              "version": platform.python_version()}
    assert server.metrics.get_sample_value("python_info", python) == 1


def test_each_server_owns_a_fresh_registry(server, tmp_path):
    publish_largenet(tmp_path, "largenet")
    with running_server(tmp_path) as other:
        assert other.metrics is not server.metrics
        assert other.sample("featurizer_images_total", model="largenet") == 0
        with FeaturizerClient(other.target, retry=None) as client:
            client.embed(tiny_images(2), model="largenet")
        assert other.sample("featurizer_images_total", model="largenet") == 2
        # CUDA device memory is reported per batch on CUDA only; a CPU server has no such series
        assert other.metrics.get_sample_value("featurizer_device_memory_bytes", {"device": "cpu"}) is None
