"""The Open Inference Protocol's calls are observed as featurizer.v1's are: counted in the request
metrics under their ``protocol`` label (v2-grpc, v2-http) and model, timed, logged once with the
request id, and refused without the token before anything is read, counted as UNAUTHENTICATED.

tritonclient (its own venv: tests/support/triton.py) and plain urllib call a real server whose
token is required; the counts are read from that server's own registry.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Optional

import grpc
import pytest

from featurizer_client.v1 import featurizer_pb2 as v1
from featurizer_client.v1 import featurizer_pb2_grpc as v1_grpc
from featurizer_client.v2 import grpc_predict_v2_pb2 as v2
from featurizer_client.v2 import grpc_predict_v2_pb2_grpc as v2_grpc
from tests.support.images import encoded_photos
from tests.support.servers import running_server
from tests.support.triton import Triton, triton_python

TOKEN = "observed-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
REQUESTS = "featurizer_requests_total"
DURATIONS = "featurizer_request_duration_seconds_count"
IN_FLIGHT = "featurizer_in_flight_requests"


@pytest.fixture(scope="module")
def server(demo_registry_template, tmp_path_factory):
    token_file = tmp_path_factory.mktemp("oip-observed") / "token"
    token_file.write_text(TOKEN + "\n")
    with running_server(demo_registry_template, auth_token_file=token_file, http_port=0) as handle:
        yield handle


@pytest.fixture(scope="module")
def base(server) -> str:
    return f"http://127.0.0.1:{server.server.http_port}"


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    return encoded_photos("JPEG")["coffee"]


def eventually(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    """A failed call is counted just after its status left: poll the server's bookkeeping briefly."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)  # polling the server thread's bookkeeping, with a deadline


def _http(url: str, body: Optional[bytes] = None, headers: Optional[dict] = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def _access(caplog, protocol: str) -> list[dict]:
    return [r.fields for r in caplog.records if r.name == "featurizer.access" and r.fields.get("protocol") == protocol]


def test_v2_grpc_calls_are_counted_with_their_protocol_and_model(server, jpeg, tmp_path, caplog):
    v2_grpc_ok = {"protocol": "v2-grpc", "method": "ModelInfer", "model": "alexnet"}
    before = {"ok": server.sample(REQUESTS, **v2_grpc_ok, code="OK"), "timed": server.sample(DURATIONS, **v2_grpc_ok),
              "v1": server.sample(REQUESTS, protocol="featurizer.v1"),
              "missing": server.sample(REQUESTS, protocol="v2-grpc", method="ModelMetadata", model="unknown",
                                       code="NOT_FOUND")}
    triton = Triton(triton_python(), "grpc", server.target, tmp_path / "tc", token=TOKEN)
    with caplog.at_level(logging.INFO, "featurizer.access"):
        answer, missing = triton.run(triton.infer("alexnet", triton.files_input([jpeg, jpeg])),
                                     {"op": "model_metadata", "model": "no-such-model"})
        assert answer["ok"]["outputs"] == {"embeddings": [2, 9216]}, answer
        assert missing["error"]["status"] == "StatusCode.NOT_FOUND", missing
        eventually(lambda: len(_access(caplog, "v2-grpc")) == 2, "the two v2 calls were not logged")
    assert server.sample(REQUESTS, **v2_grpc_ok, code="OK") == before["ok"] + 1
    assert server.sample(DURATIONS, **v2_grpc_ok) == before["timed"] + 1
    # an unknown model is folded into "unknown", as over featurizer.v1
    assert server.sample(REQUESTS, protocol="v2-grpc", method="ModelMetadata", model="unknown",
                         code="NOT_FOUND") == before["missing"] + 1
    assert server.sample(REQUESTS, protocol="featurizer.v1") == before["v1"]  # nothing counted under the other API
    assert server.sample(IN_FLIGHT, protocol="v2-grpc") == 0
    infer, metadata = _access(caplog, "v2-grpc")
    assert {k: infer[k] for k in ("method", "model", "version", "images", "status")} == \
        {"method": "ModelInfer", "model": "alexnet", "version": 1, "images": 2, "status": "OK"}
    assert (metadata["method"], metadata["model"], metadata["status"]) == ("ModelMetadata", "no-such-model", "NOT_FOUND")


def test_v2_grpc_answers_carry_the_request_id_in_trailers(server, jpeg):
    request = v2.ModelInferRequest(model_name="alexnet", inputs=[v2.ModelInferRequest.InferInputTensor(
        name="images", datatype="BYTES", shape=[1], contents=v2.InferTensorContents(bytes_contents=[jpeg]))])
    with grpc.insecure_channel(server.target) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        _, call = stub.ModelInfer.with_call(request, timeout=60, metadata=AUTH + (("x-request-id", "v2-call-7"),))
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelReady(v2.ModelReadyRequest(name="alexnet", version="x"), timeout=30,
                            metadata=AUTH + (("x-request-id", "v2-call-8"),))
    assert dict(call.trailing_metadata())["x-request-id"] == "v2-call-7"
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "model_version" in refused.value.details()
    assert dict(refused.value.trailing_metadata())["x-request-id"] == "v2-call-8"


def test_v2_http_calls_are_counted_with_their_protocol_and_model(server, base, jpeg, tmp_path, caplog):
    v2_http_ok = {"protocol": "v2-http", "method": "ModelInfer", "model": "alexnet"}
    bad = {"protocol": "v2-http", "method": "ModelInfer", "model": "alexnet", "code": "INVALID_ARGUMENT"}
    missing = {"protocol": "v2-http", "method": "ModelMetadata", "model": "unknown", "code": "NOT_FOUND"}
    before = {"ok": server.sample(REQUESTS, **v2_http_ok, code="OK"), "timed": server.sample(DURATIONS, **v2_http_ok),
              "bad": server.sample(REQUESTS, **bad), "missing": server.sample(REQUESTS, **missing),
              "grpc": server.sample(REQUESTS, protocol="v2-grpc")}
    auth = {"Authorization": f"Bearer {TOKEN}"}
    triton = Triton(triton_python(), "http", f"127.0.0.1:{server.server.http_port}", tmp_path / "tc", token=TOKEN)
    with caplog.at_level(logging.INFO, "featurizer.access"):
        answer = triton.one(triton.infer("alexnet", triton.files_input([jpeg])))
        assert answer["ok"]["outputs"] == {"embeddings": [1, 9216]}, answer
        wrong_type = json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 2, 2, 3],
                                             "data": [0.0] * 12}]}).encode()
        status, _, body = _http(f"{base}/v2/models/alexnet/infer", wrong_type, auth)
        assert status == 400 and "datatype must be UINT8" in json.loads(body)["error"]
        status, headers, _ = _http(f"{base}/v2/models/no-such-model", headers={**auth, "X-Request-Id": "http-call-9"})
        assert status == 404 and headers["X-Request-Id"] == "http-call-9"
        eventually(lambda: len(_access(caplog, "v2-http")) == 3, "the three HTTP calls were not logged")
    assert server.sample(REQUESTS, **v2_http_ok, code="OK") == before["ok"] + 1
    assert server.sample(DURATIONS, **v2_http_ok) == before["timed"] + 2  # the refused one is timed too
    assert server.sample(REQUESTS, **bad) == before["bad"] + 1
    assert server.sample(REQUESTS, **missing) == before["missing"] + 1
    assert server.sample(REQUESTS, protocol="v2-grpc") == before["grpc"]
    assert server.sample(IN_FLIGHT, protocol="v2-http") == 0
    infer, refused, unknown = _access(caplog, "v2-http")
    assert {k: infer[k] for k in ("method", "model", "version", "images", "status")} == \
        {"method": "ModelInfer", "model": "alexnet", "version": 1, "images": 1, "status": "OK"}
    assert (refused["status"], refused["images"]) == ("INVALID_ARGUMENT", 1)
    assert (unknown["method"], unknown["model"], unknown["status"], unknown["request_id"]) == \
        ("ModelMetadata", "no-such-model", "NOT_FOUND", "http-call-9")


def test_unauthenticated_v2_calls_are_counted_unauthenticated(server, base, jpeg, caplog):
    """Refused before anything is read: counted with model="" and logged once, on both sides."""
    grpc_denied = {"protocol": "v2-grpc", "method": "ModelInfer", "model": "", "code": "UNAUTHENTICATED"}
    http_denied = {"protocol": "v2-http", "method": "ModelInfer", "model": "", "code": "UNAUTHENTICATED"}
    before = (server.sample(REQUESTS, **grpc_denied), server.sample(REQUESTS, **http_denied),
              server.sample(REQUESTS, protocol="v2-grpc", model="alexnet"),
              server.sample(REQUESTS, protocol="v2-http", model="alexnet"))
    request = v2.ModelInferRequest(model_name="alexnet", raw_input_contents=[jpeg], inputs=[
        v2.ModelInferRequest.InferInputTensor(name="images", datatype="BYTES", shape=[1])])
    with caplog.at_level(logging.INFO, "featurizer.access"):
        with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as refused:
            v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
        status, headers, body = _http(f"{base}/v2/models/alexnet/infer", b"{not even json")
        eventually(lambda: len(_access(caplog, "v2-http")) == 1 and len(_access(caplog, "v2-grpc")) == 1,
                   "the refused calls were not logged")
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED and "bearer token" in refused.value.details()
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer" and "bearer token" in json.loads(body)["error"]
    assert server.sample(REQUESTS, **grpc_denied) == before[0] + 1
    assert server.sample(REQUESTS, **http_denied) == before[1] + 1
    # never counted under the model they named: their requests were not read
    assert server.sample(REQUESTS, protocol="v2-grpc", model="alexnet") == before[2]
    assert server.sample(REQUESTS, protocol="v2-http", model="alexnet") == before[3]
    for protocol in ("v2-grpc", "v2-http"):
        (line,) = _access(caplog, protocol)
        assert (line["method"], line["model"], line["status"]) == ("ModelInfer", "", "UNAUTHENTICATED")


def test_featurizer_v1_calls_carry_the_featurizer_v1_protocol(server, jpeg):
    labels = {"protocol": "featurizer.v1", "method": "Embed", "model": "alexnet", "code": "OK"}
    before = server.sample(REQUESTS, **labels), server.sample(REQUESTS, method="Embed")
    with grpc.insecure_channel(server.target) as channel:
        v1_grpc.FeaturizerStub(channel).Embed(v1.EmbedRequest(model="alexnet", images=[v1.Image(encoded=jpeg)]),
                                              timeout=60, metadata=AUTH)
    assert server.sample(REQUESTS, **labels) == before[0] + 1
    assert server.sample(REQUESTS, method="Embed") == before[1] + 1  # a query without the label: summed over it
