"""Three real ``featurizer serve`` replicas on one shared registry, one round-robin client.

A new version written to the registry is served by every replica within two poll intervals;
every replica takes traffic; one replica stopped with SIGTERM mid-job costs the client nothing.
"""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from featurizer_client import FeaturizerClient
from tests.support.reference import largenet_reference
from tests.support.registries import publish_largenet, seeded_state
from tests.support.servers import ServerProcess

pytestmark = pytest.mark.slow  # three `featurizer serve` start-ups
POLL_S = 2.0
LABELS = tuple(str(i) for i in range(10))
SEEDS = {1: 11, 2: 12}  # version -> weights seed
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shared-registry")
    publish_largenet(root, "largenet", num_classes=10, labels=LABELS, seed=SEEDS[1], version=1)
    return root


@pytest.fixture(scope="module")
def replicas(registry):
    def start(_: int) -> ServerProcess:
        return ServerProcess(registry, "--poll-interval", str(POLL_S), "--grace-seconds", "2")

    with ThreadPoolExecutor(3) as pool:
        started = [pool.submit(start, i) for i in range(3)]
        handles = [f.result() for f in started]
    yield handles
    for handle in handles:
        handle.kill()


def reference(version: int, images: np.ndarray) -> np.ndarray:
    return largenet_reference(seeded_state("largenet", {"num_classes": 10}, SEEDS[version]), images)



def test_new_version_is_served_by_every_replica_within_two_poll_intervals(registry, replicas):
    probe = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    publish_largenet(registry, "largenet", num_classes=10, labels=LABELS, seed=SEEDS[2], version=2)
    published = time.monotonic()
    converged: dict[int, float] = {}
    clients = [FeaturizerClient(r.target, timeout=10) for r in replicas]
    try:
        while len(converged) < len(replicas) and time.monotonic() < published + 2 * POLL_S:
            for i, client in enumerate(clients):  # external processes: poll with a deadline
                if i not in converged and client.get_model("largenet").default_version == 2:
                    converged[i] = time.monotonic() - published
            time.sleep(0.05)
        rows = [client.embed(probe, model="largenet") for client in clients]
    finally:
        for client in clients:
            client.close()
    print(f"\nnew version served after {sorted(round(s, 2) for s in converged.values())} s (poll {POLL_S} s)")
    assert sorted(converged) == [0, 1, 2]
    for X in rows:  # version 0 now means 2, and version 2's weights answer
        assert np.abs(X - reference(2, probe)).max() <= TOLERANCE


def test_round_robin_reaches_every_replica_and_survives_a_sigterm(replicas):
    images = np.random.default_rng(2).integers(0, 256, (2_000, 32, 32, 3), dtype=np.uint8)
    target = "ipv4:" + ",".join(f"127.0.0.1:{r.port}" for r in replicas)
    stopping, halfway = threading.Event(), threading.Event()
    before = [r.scrape("featurizer_images_total", model="largenet") for r in replicas]

    def feed():
        """A third of the way in, hold the job until the first replica has been sent SIGTERM."""
        for i, image in enumerate(images):
            if i == len(images) // 3:
                halfway.set()
                stopping.wait(60)
            yield image

    with FeaturizerClient(target, timeout=60) as client, ThreadPoolExecutor(1) as pool:
        job = pool.submit(client.embed, feed(), model="largenet", version=1, batch_size=64, max_in_flight=4)
        assert halfway.wait(120)
        at_sigterm = [r.scrape("featurizer_images_total", model="largenet") for r in replicas]
        replicas[0].proc.send_signal(signal.SIGTERM)
        stopping.set()
        assert replicas[0].proc.wait(60) == 0
        X = job.result(120)  # raises if any call failed
    after = [r.scrape("featurizer_images_total", model="largenet") for r in replicas[1:]]
    assert np.abs(X - reference(1, images)).max() <= TOLERANCE and X.shape == (len(images), 10)
    assert all(a > b for a, b in zip(at_sigterm, before)), (before, at_sigterm)  # every replica took traffic
    assert all(a > b for a, b in zip(after, at_sigterm[1:])), (at_sigterm, after)  # survivors took the rest
    served = sum(at_sigterm) - sum(before)
    print(f"\nimages per replica before SIGTERM: {[a - b for a, b in zip(at_sigterm, before)]} of {served}")
