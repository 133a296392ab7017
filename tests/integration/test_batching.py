"""End to end, many callers -> one NCHW batch -> each caller exactly its own row.

Real servers on 127.0.0.1:0, real gRPC clients, real photographs; rows are compared with
torchvision's AlexNet run on the same pixels.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2

from featurizer.inference.device import DEFAULT_THREADS, per_thread_intra_op
from featurizer.registry.manifest import IMAGENET_MEAN, IMAGENET_STD
from featurizer_client import FeaturizerClient
from tests.support.images import encode, photos
from tests.support.reference import reference_features, torchvision_alexnet
from tests.support.registries import NATIVE, publish_alexnet
from tests.support.servers import health_status, running_server
from tests.support.test_builders import GATES, Gate, publish_test_model

TOLERANCE = 1e-4
CALLERS = 32
SAFETY_S = 60  # only against hangs


@pytest.fixture(scope="module")
def reference_model():
    return torchvision_alexnet()


def distinct_photos(count: int) -> list[bytes]:
    """``count`` different JPEGs: the shipped photos, each caller a different crop."""
    arrays = list(photos().values())
    return [encode(np.ascontiguousarray(arrays[i % len(arrays)][i:, 2 * i:])) for i in range(count)]


def test_concurrent_single_image_callers_are_batched_and_each_gets_its_own_row(demo_registry_template,
                                                                               reference_model):
    jpegs = distinct_photos(CALLERS)
    start = threading.Barrier(CALLERS)

    def caller(jpeg: bytes) -> np.ndarray:
        with FeaturizerClient(server.target) as client:
            client.health()  # connected before the race starts
            start.wait(SAFETY_S)
            return client.embed([jpeg], model="alexnet")

    with running_server(demo_registry_template) as server:
        with ThreadPoolExecutor(CALLERS) as pool:
            rows = list(pool.map(caller, jpegs))
        batches = server.sample("featurizer_batch_size_count", model="alexnet")
        singles = server.sample("featurizer_batch_size_bucket", model="alexnet", le="1.0")
        images = server.sample("featurizer_batch_size_sum", model="alexnet")
    for jpeg, row in zip(jpegs, rows):
        assert row.shape == (1, 9216)
        assert np.abs(row[0] - reference_features(reference_model, jpeg)).max() <= TOLERANCE
    assert images >= CALLERS  # every image went through a counted forward pass (+ warm-up)
    assert singles < batches, "no forward pass held more than one image"


def test_health_and_listing_answer_while_a_large_batch_runs(tmp_path):
    publish_test_model(tmp_path, "gated", "test_gated", {"gate": "batching-health"})
    images = [np.ascontiguousarray(a[:64, :64]) for a in photos().values()] * 13  # 65 images, one request
    with running_server(tmp_path, max_batch_size=128) as server:
        gate = GATES["batching-health"] = Gate()
        try:
            with FeaturizerClient(server.target) as client, ThreadPoolExecutor(1) as pool:
                pending = pool.submit(client.embed, images, model="gated", batch_size=len(images))
                assert gate.entered.wait(SAFETY_S), "the batch never reached the model"
                assert health_status(server.target) == health_pb2.HealthCheckResponse.SERVING
                assert [m.name for m in client.list_models()] == ["gated"]
                assert not pending.done()  # the answers above came while the forward pass was held
                gate.release.set()
                X = pending.result(SAFETY_S)
        finally:
            gate.release.set()
            GATES.pop("batching-health", None)
        assert gate.calls == 1 and X.shape == (len(images), 3)  # one forward pass for the whole request
        assert server.sample("featurizer_batch_size_bucket", model="gated", le="32.0") < \
            server.sample("featurizer_batch_size_count", model="gated")


def native_reference(model: torch.nn.Module, array: np.ndarray) -> np.ndarray:
    """torchvision AlexNet features at the image's own size, globally average-pooled."""
    x = torch.from_numpy(array).permute(2, 0, 1).float().div(255).unsqueeze(0)
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.inference_mode():
        return torch.flatten(torch.nn.functional.adaptive_avg_pool2d(model.features(x), 1), 1)[0].numpy()


def test_native_sizes_are_bucketed_by_shape_and_each_row_is_correct(tmp_path, reference_model):
    publish_alexnet(tmp_path, "native", pooling="avg", input=NATIVE)
    p = photos()
    images = [np.ascontiguousarray(a) for a in (
        p["chelsea"][:120, :160], p["coffee"][:96, :128], p["chelsea"][40:160, 60:220],  # same shape as [0]
        p["astronaut"][:100, :100], p["coffee"][50:146, 100:228])]                        # same shape as [1]
    shapes = {a.shape for a in images}
    with running_server(tmp_path) as server:
        runner = server.server.manager.resolve("native").runner
        before = runner.forward_passes
        with FeaturizerClient(server.target) as client:
            X = client.embed(images, model="native")
        passes = runner.forward_passes - before
    assert passes == len(shapes)  # one batch, one tensor per shape: never mixed, never one per image
    for array, row in zip(images, X):
        assert np.abs(row - native_reference(reference_model, array)).max() <= TOLERANCE


def test_inference_thread_keeps_torch_default_threads_and_preprocessing_threads_use_one(tmp_path):
    publish_test_model(tmp_path, "small", "test_gated", {"gate": "batching-threads"})
    seen = []
    for _ in range(2):  # a second server in the process must not inherit a worker's single thread
        with running_server(tmp_path, preprocess_workers=2) as server:
            with FeaturizerClient(server.target) as client:
                client.embed([photos()["coffee"]] * 4, model="small")  # the preprocessing threads exist now
            inference = server.server.device.executor.submit(torch.get_num_threads).result(SAFETY_S)
            preprocessing = {server.server.engine.preparer._pool.submit(torch.get_num_threads).result(SAFETY_S)
                             for _ in range(8)}
            seen.append((inference, preprocessing))
    one = {1} if per_thread_intra_op() else {DEFAULT_THREADS}  # OpenMP: a per-thread setting
    assert seen == [(DEFAULT_THREADS, one)] * 2

