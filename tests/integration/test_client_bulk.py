"""Big jobs. 10,000 distinct images come back complete and in order, and a job survives
its server being restarted on the same port (gRPC wait-for-ready + retry policy, no loop of ours)."""

from __future__ import annotations

import asyncio
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from featurizer_client import AsyncFeaturizerClient, FeaturizerClient
from tests.support.reference import largenet_reference
from tests.support.registries import publish_largenet, seeded_state
from tests.support.servers import ServerProcess, free_port, running_server

N = 10_000
BATCH, IN_FLIGHT = 64, 4
TOLERANCE = 1e-4
SAME = 1e-6  # float32 rounding of the same rows in differently composed server batches
SEED = 3


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bulk-registry")
    publish_largenet(root, "largenet", num_classes=10, labels=[str(i) for i in range(10)], seed=SEED)
    return root


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """N distinct 32x32 noise images (uint8 NHWC): every row of the answer is recognisable."""
    return np.random.default_rng(0).integers(0, 256, (N, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def reference(images) -> np.ndarray:
    return largenet_reference(seeded_state("largenet", {"num_classes": 10}, SEED), images)


def assert_rows_in_order(X: np.ndarray, reference: np.ndarray) -> None:
    assert X.shape == reference.shape
    assert np.abs(X - reference).max() <= TOLERANCE
    # Neighbouring rows differ by far more than the tolerance, so a lost, duplicated or swapped
    # row would have failed the line above.
    assert np.abs(reference[1:] - reference[:-1]).max(axis=1).min() > 10 * TOLERANCE


async def async_embed(target: str, images: np.ndarray) -> np.ndarray:
    async with AsyncFeaturizerClient(target) as client:
        return await client.embed(images, model="largenet", batch_size=BATCH, max_in_flight=IN_FLIGHT)


def test_ten_thousand_images_complete_and_in_order_sync_and_async(registry, images, reference, capsys):
    with running_server(registry) as server:
        with FeaturizerClient(server.target) as client:
            X = client.embed(images, model="largenet", batch_size=BATCH, max_in_flight=IN_FLIGHT, progress=True)
        Y = asyncio.run(async_embed(server.target, images))
        calls = server.sample("featurizer_requests_total", method="Embed", model="largenet", code="OK")
    assert_rows_in_order(X, reference)
    assert np.abs(X - Y).max() <= SAME
    assert calls == 2 * -(-N // BATCH)  # one call per chunk of 64, for each client
    assert f"{N}/{N}" in capsys.readouterr().err  # the tqdm bar counted every image



@pytest.mark.slow  # two `featurizer serve` start-ups
def test_job_survives_a_server_restart_on_the_same_port(registry, images, reference):
    port = free_port()
    first = ServerProcess(registry, "--grace-seconds", "2", port=port)
    second = None
    stopping, halfway = threading.Event(), threading.Event()
    count = 2_000

    def feed():
        """The job's input; a third of the way in, it waits until the server is being stopped."""
        for i, image in enumerate(images[:count]):
            if i == count // 3:
                halfway.set()
                stopping.wait(60)
            yield image

    try:
        with FeaturizerClient(first.target, timeout=120) as client, ThreadPoolExecutor(1) as pool:
            job = pool.submit(client.embed, feed(), model="largenet", batch_size=BATCH, max_in_flight=IN_FLIGHT)
            assert halfway.wait(60)
            first.proc.send_signal(signal.SIGTERM)  # drains calls in flight, refuses new ones, exits
            stopping.set()
            assert first.proc.wait(60) == 0
            second = ServerProcess(registry, port=port)
            X = job.result(120)
            served_by_second = second.scrape("featurizer_images_total", model="largenet")
    finally:
        first.kill()
        if second is not None:
            second.kill()
    assert_rows_in_order(X, reference[:count])  # nothing lost, nothing twice
    assert 0 < served_by_second < count  # the job really spanned both servers
