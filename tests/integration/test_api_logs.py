"""Structured JSON logs of a real ``featurizer serve`` process, one access line per RPC."""

from __future__ import annotations

import json

import grpc

from featurizer_client.v1 import featurizer_pb2 as pb
from featurizer_client.v1 import featurizer_pb2_grpc as pb_grpc
from tests.support.images import encoded_photos
from tests.support.servers import ServerProcess


def test_one_json_access_line_per_request_with_the_request_id(demo_registry_template):
    jpeg = encoded_photos("JPEG")["coffee"]
    server = ServerProcess(demo_registry_template)
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.FeaturizerStub(channel)
            two = pb.EmbedRequest(model="alexnet", images=[pb.Image(encoded=jpeg)] * 2)
            _, given = stub.Embed.with_call(two, timeout=60, metadata=(("x-request-id", "caller-id-42"),))
            _, generated = stub.Embed.with_call(pb.EmbedRequest(model="alexnet", images=[pb.Image(encoded=jpeg)]),
                                                timeout=60)
            try:
                stub.Embed(pb.EmbedRequest(model="no-such-model", images=[pb.Image(encoded=jpeg)]), timeout=60,
                           metadata=(("x-request-id", "caller-id-43"),))
                raise AssertionError("an unknown model must fail")
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.NOT_FOUND
        assert dict(given.trailing_metadata())["x-request-id"] == "caller-id-42"
        generated_id = dict(generated.trailing_metadata())["x-request-id"]
        assert len(generated_id) == 32 and int(generated_id, 16) >= 0  # a fresh uuid4 hex
        assert server.terminate() == 0
        lines = server.stderr_lines()
    finally:
        server.kill()

    entries = [json.loads(line) for line in lines if line.strip()]  # every line is one JSON object
    access = {e["request_id"]: e for e in entries if e.get("logger") == "featurizer.access"}
    assert len(access) == 3
    ok = access["caller-id-42"]
    assert {k: ok[k] for k in ("method", "model", "version", "images", "status")} == \
        {"method": "Embed", "model": "alexnet", "version": 1, "images": 2, "status": "OK"}
    assert isinstance(ok["latency_ms"], float) and ok["latency_ms"] > 0 and ok["level"] == "info"
    assert access[generated_id]["images"] == 1 and access[generated_id]["status"] == "OK"
    missing = access["caller-id-43"]
    assert (missing["model"], missing["status"], missing["images"]) == ("no-such-model", "NOT_FOUND", 1)
