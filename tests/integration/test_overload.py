"""Overload, cancellation storms, expired deadlines and a model that raises, made
deterministic with a gated test model (its forward pass waits until the test releases it).

The server runs one batch at a time with one image per batch, so while the gate is closed the
first request sits in the forward pass and every later image waits in the queue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import numpy as np
import pytest
from featurizer_client.tensors import to_proto
from featurizer_client.v1 import featurizer_pb2 as pb
from featurizer_client.v1 import featurizer_pb2_grpc as pb_grpc

from featurizer.logs import ACCESS
from tests.support.bad_inputs import leaks
from tests.support.servers import running_server
from tests.support.test_builders import GATES, Gate, publish_test_model
from tests.support.observers import DepthWatcher

MAX_QUEUE = 16
WAIT = 60  # seconds: only a bound on waiting for events, never a measure


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("overload-registry")
    publish_test_model(root, "gated", "test_gated", {"gate": "overload-test"})
    publish_test_model(root, "steady", "test_gated", {"gate": "never-installed"})
    publish_test_model(root, "raising", "test_raising", {"after": 2})  # warm-up + one good batch, then raises
    with running_server(root, max_queue=MAX_QUEUE, max_batch_size=1, max_delay_ms=0) as handle:
        handle.root = root
        yield handle
    GATES.pop("overload-test", None)


def image(seed: int) -> pb.Image:
    return pb.Image(tensor=to_proto(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)))


def embed(stub, model: str, seed: int, **kwargs):
    return stub.Embed.future(pb.EmbedRequest(model=model, images=[image(seed)]), **kwargs)


class StatusWatcher(logging.Handler):
    """Counts access-log lines (one per finished RPC) by status; signals at ``count`` of ``statuses``."""

    def __init__(self, statuses: set[str], count: int) -> None:
        super().__init__()
        self.statuses, self.count, self.seen, self.reached = statuses, count, 0, threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "fields", {}).get("status") in self.statuses:
            self.seen += 1
            if self.seen >= self.count:
                self.reached.set()


@contextmanager
def watching_access_log(statuses: set[str], count: int) -> Iterator[StatusWatcher]:
    watcher = StatusWatcher(statuses, count)
    level = ACCESS.level
    ACCESS.addHandler(watcher)
    ACCESS.setLevel(logging.INFO)
    try:
        yield watcher
    finally:
        ACCESS.removeHandler(watcher)
        ACCESS.setLevel(level)


@contextmanager
def closed_gate(server, stub) -> Iterator[Gate]:
    """A fresh gate holding the first request ("the blocker") in the forward pass."""
    gate = GATES["overload-test"] = Gate()
    blocker = embed(stub, "gated", 2**20)
    assert gate.entered.wait(WAIT)
    try:
        yield gate
    finally:
        gate.release.set()  # stays installed (open) so later forward passes are counted too
        assert blocker.result(WAIT).embeddings.shape == [1, 3]


def watch_depth(server, depth: int) -> DepthWatcher:
    batcher = server.server.manager.versions[("gated", 1)].batcher
    watcher = DepthWatcher(batcher._observer, depth)
    batcher._observer = watcher
    return watcher


def drops(server, reason: str) -> float:
    return server.sample("featurizer_dropped_total", model="gated", reason=reason)


def test_four_times_the_admission_limit_gets_resource_exhausted_at_once_and_recovers(server):
    offered = 4 * MAX_QUEUE
    before = drops(server, "overload")
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.FeaturizerStub(channel)
        with closed_gate(server, stub) as gate:
            refused = threading.Semaphore(0)
            started = time.perf_counter()
            calls = [embed(stub, "gated", i) for i in range(offered)]
            for call in calls:
                call.add_done_callback(lambda _: refused.release())
            for _ in range(offered - MAX_QUEUE):  # the excess is answered while the gate is still closed
                assert refused.acquire(timeout=WAIT)
            print(f"\noverload: {offered} offered, {offered - MAX_QUEUE} refused within "
                  f"{(time.perf_counter() - started) * 1000:.0f} ms of the first send, while the model was blocked")
            done = [c for c in calls if c.done()]
            assert len(done) == offered - MAX_QUEUE
            assert {c.code() for c in done} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            assert "overloaded" in done[0].details() and f"limit {MAX_QUEUE}" in done[0].details()
            assert server.sample("featurizer_queue_depth", model="gated") == MAX_QUEUE
            assert gate.calls == 1  # only the blocker has run
        admitted = [c for c in calls if c not in done]
        assert all(c.result(WAIT).embeddings.shape == [1, 3] for c in admitted)
        assert drops(server, "overload") - before == offered - MAX_QUEUE
        assert server.sample("featurizer_queue_depth", model="gated") == 0
        # Recovered at once: a full queue's worth is admitted straight away.
        again = [embed(stub, "gated", 1000 + i) for i in range(MAX_QUEUE)]
        assert all(c.result(WAIT).embeddings.shape == [1, 3] for c in again)


def test_cancelled_callers_are_dropped_not_computed(server):
    queued, cancelled = 12, 6
    before = drops(server, "cancelled")
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.FeaturizerStub(channel)
        with closed_gate(server, stub) as gate:
            depth = watch_depth(server, queued)
            calls = [embed(stub, "gated", i) for i in range(queued)]
            assert depth.reached.wait(WAIT)
            order = np.random.default_rng(7).permutation(queued)
            departed = [calls[i] for i in order[:cancelled]]
            with watching_access_log({"CANCELLED"}, cancelled) as log:
                for call in departed:
                    call.cancel()
                assert log.reached.wait(WAIT)  # the server saw every cancellation
        stayed = [calls[i] for i in order[cancelled:]]
        assert all(c.result(WAIT).embeddings.shape == [1, 3] for c in stayed)
        # The queue is FIFO: once a later caller is answered, everything before it was taken or dropped.
        assert embed(stub, "gated", 999).result(WAIT).embeddings.shape == [1, 3]
    assert all(c.cancelled() for c in departed)
    assert gate.calls == 1 + (queued - cancelled) + 1  # the blocker, those who stayed, the last call
    assert drops(server, "cancelled") - before == cancelled
    assert server.sample("featurizer_queue_depth", model="gated") == 0


def test_a_cancellation_storm_leaves_no_queue_and_no_extra_work(server):
    storm = 32
    before = drops(server, "cancelled")
    rng = np.random.default_rng(11)
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.FeaturizerStub(channel)
        with closed_gate(server, stub) as gate:
            calls = []
            for i in range(storm):  # each caller leaves after a random number of later arrivals
                calls.append(embed(stub, "gated", i))
                for call in [c for c in calls if not c.done() and rng.random() < 0.3]:
                    call.cancel()
            for call in calls:
                call.cancel()
        assert embed(stub, "gated", 999).result(WAIT).embeddings.shape == [1, 3]
    computed = gate.calls - 2  # minus the blocker and the last call
    dropped = drops(server, "cancelled") - before
    assert computed + dropped <= storm  # no image computed twice, none both computed and dropped
    assert server.sample("featurizer_queue_depth", model="gated") == 0


def test_expired_deadlines_are_dropped_not_computed(server):
    expiring = 6
    before = drops(server, "cancelled") + drops(server, "deadline")
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.FeaturizerStub(channel)
        with closed_gate(server, stub) as gate:
            depth = watch_depth(server, expiring)
            with watching_access_log({"CANCELLED", "DEADLINE_EXCEEDED"}, expiring) as log:
                calls = [embed(stub, "gated", i, timeout=3.0) for i in range(expiring)]
                assert depth.reached.wait(WAIT)
                assert all(c.exception(WAIT).code() == grpc.StatusCode.DEADLINE_EXCEEDED for c in calls)
                assert log.reached.wait(WAIT)
        assert embed(stub, "gated", 999).result(WAIT).embeddings.shape == [1, 3]
    assert gate.calls == 2  # the blocker and the last call: nothing for callers whose deadline passed
    assert drops(server, "cancelled") + drops(server, "deadline") - before == expiring
    assert server.sample("featurizer_queue_depth", model="gated") == 0


def test_a_model_that_raises_fails_only_its_own_batch(server):
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.FeaturizerStub(channel)
        assert embed(stub, "raising", 1).result(WAIT).embeddings.shape == [1, 3]  # its good batch
        others = [embed(stub, "steady", i) for i in range(8)]
        failing = embed(stub, "raising", 2)
        others += [embed(stub, "steady", 10 + i) for i in range(8)]
        error = failing.exception(WAIT)
        assert error.code() == grpc.StatusCode.INTERNAL
        assert "inference failed for model raising@1" in error.details()
        assert not leaks(error.details(), server.root) and "on purpose" not in error.details()
        assert all(c.result(WAIT).embeddings.shape == [1, 3] for c in others)
        assert embed(stub, "steady", 99).result(WAIT).embeddings.shape == [1, 3]
