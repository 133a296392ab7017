"""SIGTERM on a real ``featurizer serve`` process with 16 calls in flight.

Health flips to NOT_SERVING first, new calls are refused with UNAVAILABLE, the calls in flight
complete (or get UNAVAILABLE), none hangs, and the process exits 0.
"""

from __future__ import annotations

import signal
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from featurizer_client.tensors import to_proto
from featurizer_client.v1 import featurizer_pb2 as pb
from featurizer_client.v1 import featurizer_pb2_grpc as pb_grpc
from tests.support.images import encoded_photos
from tests.support.servers import ServerProcess, ServerThread, health_status
from tests.support.test_builders import GATES, Gate, publish_test_model

IN_FLIGHT = 16
IMAGES_PER_CALL = 2


def _outcome(call: grpc.Future) -> grpc.StatusCode:
    try:
        call.result()
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        return error.code()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_drains_calls_in_flight_then_exits_zero(demo_registry_template, signum):
    server = ServerProcess(demo_registry_template, "--grace-seconds", "60")
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.FeaturizerStub(channel)
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=120)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING

            jpeg = encoded_photos("JPEG")["astronaut"]
            request = pb.EmbedRequest(model="alexnet", images=[pb.Image(encoded=jpeg)] * IMAGES_PER_CALL)
            calls = [stub.Embed.future(request, timeout=120, metadata=(("x-request-id", f"drain-{i}"),))
                     for i in range(IN_FLIGHT)]
            deadline = time.monotonic() + 60  # every handler has started: the calls are in flight
            while server.scrape("featurizer_in_flight_requests", method="Embed") < IN_FLIGHT:
                assert time.monotonic() < deadline, "the 16 calls never reached the server"

            server.proc.send_signal(signum)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()  # a Watch stream is an in-flight call too: don't hold the grace period

            with pytest.raises(grpc.RpcError) as refused:
                stub.Embed(request, timeout=60)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

            outcomes = [_outcome(call) for call in calls]  # each has a 120 s deadline: none may hang
            assert set(outcomes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, outcomes
            assert outcomes.count(grpc.StatusCode.OK) > 0
        assert server.proc.wait(120) == 0
    finally:
        server.kill()


def test_a_call_still_running_when_the_grace_period_ends_gets_unavailable(tmp_path):
    publish_test_model(tmp_path, "gated", "test_gated", {"gate": "shutdown-grace"})
    server = ServerThread(tmp_path)
    GATES["shutdown-grace"] = gate = Gate()
    try:
        with grpc.insecure_channel(server.target) as channel:
            image = pb.Image(tensor=to_proto(np.zeros((8, 8, 3), np.uint8)))
            call = pb_grpc.FeaturizerStub(channel).Embed.future(pb.EmbedRequest(model="gated", images=[image]),
                                                                timeout=60)
            assert gate.entered.wait(30)  # held in its forward pass
            stopping = server.submit(server.server.stop(0.5))
            assert _outcome(call) == grpc.StatusCode.UNAVAILABLE  # cut off at the end of the grace period
            with pytest.raises(grpc.RpcError) as probe:
                health_status(server.target)
            assert probe.value.code() == grpc.StatusCode.UNAVAILABLE  # the port is closed
            gate.release.set()
            stopping.result(60)
    finally:
        gate.release.set()
        GATES.pop("shutdown-grace", None)
        server.loop.call_soon_threadsafe(server.loop.stop)
