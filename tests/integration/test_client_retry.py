"""The SDK's retry policy (gRPC service config) retries a RESOURCE_EXHAUSTED from a full queue.

This works only because the server sends no response headers before its answer (the request id
travels in trailers): a call whose headers have arrived is committed and never retried.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from featurizer_client import FeaturizerClient, RetryPolicy
from tests.support.servers import running_server
from tests.support.test_builders import GATES, Gate, publish_test_model


def _wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_overloaded_call_is_retried_by_the_policy_and_succeeds(tmp_path):
    publish_test_model(tmp_path, "gated", "test_gated", {"gate": "retry"})
    image = np.full((8, 8, 3), 200, np.uint8)
    with running_server(tmp_path, max_queue=1) as server:
        GATES["retry"] = gate = Gate()
        patient = RetryPolicy(max_attempts=5, initial_backoff=0.3, max_backoff=1.0)
        try:
            with FeaturizerClient(server.target, retry=patient) as client, ThreadPoolExecutor(3) as pool:
                running = pool.submit(client.embed, [image], model="gated")
                assert gate.entered.wait(30)                       # first call held in its forward pass
                queued = pool.submit(client.embed, [image], model="gated")
                _wait_for(lambda: server.sample("featurizer_queue_depth", model="gated") == 1, "a full queue")
                retried = pool.submit(client.embed, [image], model="gated")
                _wait_for(lambda: server.sample("featurizer_requests_total", method="Embed", model="gated",
                                                code="RESOURCE_EXHAUSTED") >= 1, "an overloaded attempt")
                gate.release.set()
                rows = [f.result(60) for f in (running, queued, retried)]
        finally:
            gate.release.set()
            GATES.pop("retry", None)
    assert all(np.array_equal(rows[0], r) for r in rows)  # the retried call got the same answer
    assert server.sample("featurizer_requests_total", method="Embed", model="gated", code="OK") == 3
