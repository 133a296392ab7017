"""The Open Inference Protocol over HTTP/REST (--http-port), called by tritonclient.http
from PyPI (binary tensor data, its default) and by plain urllib (JSON, no SDK), checked against
featurizer.v1 on the same server and images.
"""

from __future__ import annotations

import json
import shutil
import struct
import urllib.error
import urllib.request
from typing import Optional

import numpy as np
import pytest

from tests.support.images import encoded_photos, photos
from tests.support.reference import preset_tensor
from tests.support.servers import running_server
from tests.support.triton import TOLERANCE, Triton, publish_oip_models, triton_python, v1_embed, v1_error, v1_predict


@pytest.fixture(scope="module")
def registry(demo_registry_template, tmp_path_factory):
    root = tmp_path_factory.mktemp("oip-http") / "registry"
    shutil.copytree(demo_registry_template, root)
    publish_oip_models(root)
    return root


@pytest.fixture(scope="module")
def server(registry):
    with running_server(registry, http_port=0) as handle:
        yield handle


@pytest.fixture(scope="module")
def base(server) -> str:
    return f"http://127.0.0.1:{server.server.http_port}"


@pytest.fixture(scope="module")
def triton(server, tmp_path_factory):
    return Triton(triton_python(), "http", f"127.0.0.1:{server.server.http_port}",
                  tmp_path_factory.mktemp("tritonclient-http"))


@pytest.fixture(scope="module")
def jpegs():
    photos_ = encoded_photos("JPEG")
    return [photos_["chelsea"], photos_["rocket"]]


def _ok(result: dict):
    assert "ok" in result, result
    return result["ok"]


def _http(url: str, body: Optional[bytes] = None, headers: Optional[dict] = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_live_ready_and_metadata(triton):
    live, ready, server_meta, model_ready, missing_ready, meta = triton.run(
        {"op": "live"}, {"op": "ready"}, {"op": "server_metadata"}, {"op": "model_ready", "model": "largenet10"},
        {"op": "model_ready", "model": "alexnet", "version": "9"}, {"op": "model_metadata", "model": "largenet10"})
    assert _ok(live) is True and _ok(ready) is True and _ok(model_ready) is True
    assert _ok(missing_ready) is False  # tritonclient.http reads any non-200 as "not ready"
    assert _ok(server_meta)["name"] == "featurizer"
    assert _ok(meta)["platform"] == "featurizer_classifier" and _ok(meta)["versions"] == ["1"]
    assert _ok(meta)["inputs"][2] == {"name": "tensor", "datatype": "FP32", "shape": [-1, 3, 32, 32]}
    assert _ok(meta)["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
                                    {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]}]


def test_tritonclient_http_embeds_and_predicts_as_featurizer_v1(triton, server, jpegs):
    pixels = np.stack([photos()["chelsea"][:200, :200], photos()["coffee"][:200, :200]])
    tensor = np.concatenate([preset_tensor(j).numpy() for j in jpegs]).astype(np.float32)
    by_jpeg = triton.infer("alexnet", triton.files_input(jpegs))
    by_pixels = triton.infer("alexnet", triton.array_input("pixels", "UINT8", pixels), outputs=["embeddings"])
    by_tensor = triton.infer("alexnet", triton.array_input("tensor", "FP32", tensor), version="1")
    head = triton.infer("objects", triton.files_input(jpegs), parameters={"top_k": 2})
    answers = [_ok(r) for r in triton.run(by_jpeg, by_pixels, by_tensor, head)]
    for call, images in ((by_jpeg, jpegs), (by_pixels, list(pixels)), (by_tensor, list(tensor))):
        np.testing.assert_allclose(triton.output(call, "embeddings"), v1_embed(server.target, "alexnet", images),
                                   rtol=TOLERANCE, atol=TOLERANCE)
    predictions = v1_predict(server.target, "objects", jpegs, top_k=3)
    np.testing.assert_allclose(triton.output(head, "probabilities"),
                               [[{c.index: c.probability for c in p.classes}[i] for i in range(3)] for p in predictions],
                               rtol=TOLERANCE, atol=TOLERANCE)
    assert answers[3]["outputs"]["labels"] == [[c.label for c in p.classes[:2]] for p in predictions]


def test_errors_are_json_with_the_matching_status(triton, server, jpegs):
    bad = b"\xff\xd8 not really a jpeg"
    unknown, bad_image, wrong_type, good = triton.run(
        triton.infer("no-such-model", triton.files_input(jpegs[:1])),
        triton.infer("alexnet", triton.files_input([bad])),
        triton.infer("alexnet", triton.array_input("pixels", "FP32", np.zeros((1, 8, 8, 3), np.float32))),
        triton.infer("alexnet", triton.files_input(jpegs[:1])))
    assert unknown["error"] == {"status": "404", "message": v1_error(server.target, "no-such-model", jpegs[:1])[1]}
    assert bad_image["error"] == {"status": "400", "message": v1_error(server.target, "alexnet", [bad])[1]}
    assert wrong_type["error"] == {"status": "400", "message": "input 'pixels': datatype must be UINT8, got FP32"}
    assert _ok(good)["outputs"] == {"embeddings": [1, 9216]}


def test_urllib_json_gets_the_same_embedding(base, server):
    """No SDK: the protocol's JSON tensors, in and out."""
    image = photos()["astronaut"][100:164, 200:264]  # 64 x 64 RGB
    body = {"id": "q1", "inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 64, 64, 3],
                                    "data": image.tolist()}]}
    status, headers, raw = _http(f"{base}/v2/models/alexnet/infer", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    assert status == 200 and headers["Content-Type"].startswith("application/json"), raw[:300]
    answer = json.loads(raw)
    assert answer["id"] == "q1" and answer["model_name"] == "alexnet" and answer["model_version"] == "1"
    (output,) = answer["outputs"]
    assert output["name"] == "embeddings" and output["datatype"] == "FP32" and output["shape"] == [1, 9216]
    np.testing.assert_allclose(np.array(output["data"], np.float32).reshape(1, -1), v1_embed(server.target, "alexnet", [image]),
                               rtol=TOLERANCE, atol=TOLERANCE)


def test_a_jpeg_posted_as_binary_data(base, server, jpegs):
    """The curl example of docs/oip.md: JSON header, then the length-prefixed JPEG; raw FP32 back."""
    element = struct.pack("<I", len(jpegs[0])) + jpegs[0]
    header = json.dumps({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": len(element)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    status, headers, raw = _http(f"{base}/v2/models/alexnet/versions/1/infer", header + element,
                                 {"Content-Type": "application/octet-stream",
                                  "Inference-Header-Content-Length": str(len(header))})
    assert status == 200, raw[:300]
    size = int(headers["Inference-Header-Content-Length"])
    answer = json.loads(raw[:size])
    assert answer["outputs"][0]["parameters"] == {"binary_data_size": 9216 * 4}
    np.testing.assert_allclose(np.frombuffer(raw[size:], "<f4").reshape(1, -1), v1_embed(server.target, "alexnet", jpegs[:1]),
                               rtol=TOLERANCE, atol=TOLERANCE)


def test_bad_requests_name_what_was_wrong(base):
    cases = [
        (b"{not json", {}, 400, "request body: not valid JSON"),
        (json.dumps({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1],
                                 "parameters": {"binary_data_size": 50}}]}).encode() + b"short",
         {"Inference-Header-Content-Length": None}, 400, "binary_data_size 50 runs past"),
        (json.dumps({"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 2, 2, 3], "data": [300] * 12}]}).encode(),
         {}, 400, "UINT8 data must be integers in 0..255"),
        (json.dumps({"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 2, 2, 3], "data": [1] * 5}]}).encode(),
         {}, 400, "data holds 5 elements; shape [1, 2, 2, 3] needs 12"),
        (json.dumps({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": ["x"]}],
                     "parameters": {"top_k": 3}}).encode(), {}, 400, "top_k: applies to classifiers"),
    ]
    for body, headers, status, fragment in cases:
        if "Inference-Header-Content-Length" in headers:
            headers = {"Inference-Header-Content-Length": str(body.index(b"short"))}
        got, _, raw = _http(f"{base}/v2/models/alexnet/infer", body, headers)
        assert got == status and fragment in json.loads(raw)["error"], (raw, fragment)
    status, _, raw = _http(f"{base}/v2/models/alexnet/versions/x/ready")
    assert status == 400 and "model_version: expected a version number" in json.loads(raw)["error"]
    status, _, raw = _http(f"{base}/v2/nothing-here")
    assert status == 404 and "error" in json.loads(raw)
    status, _, raw = _http(f"{base}/v2/health/live", b"{}")
    assert status == 405 and "POST is not allowed" in json.loads(raw)["error"]


def test_openapi_describes_what_is_served(base):
    status, _, raw = _http(f"{base}/v2/openapi.json")
    document = json.loads(raw)
    assert status == 200 and document["openapi"].startswith("3.")
    assert {"/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{model}", "/v2/models/{model}/ready",
            "/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer"} <= set(document["paths"])
    model = document["paths"]["/v2/models/{model}/infer"]["post"]["parameters"][0]
    assert {"alexnet", "objects", "largenet10"} <= set(model["schema"]["enum"])


def test_without_the_token_http_is_401_before_reading_the_body(demo_registry_template, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    with running_server(demo_registry_template, auth_token_file=token_file, http_port=0,
                        max_message_bytes=1 << 20) as secured:
        base = f"http://127.0.0.1:{secured.server.http_port}"
        garbage = b"\x00" * 4096  # never parsed: refused on the header
        refused = _http(f"{base}/v2/models/alexnet/infer", garbage)
        wrong = _http(f"{base}/v2/models/alexnet", headers={"Authorization": "Bearer nope"})
        health = _http(f"{base}/v2/health/ready")
        too_big = _http(f"{base}/v2/models/alexnet/infer", b"{" + b" " * (2 << 20) + b"}",
                        {"Authorization": "Bearer s3cret"})
        triton = Triton(triton_python(), "http", f"127.0.0.1:{secured.server.http_port}", tmp_path / "tc")
        call = triton.infer("alexnet", triton.files_input([encoded_photos()["coffee"]]))
        sdk_refused = triton.one(call, token=None)
        allowed = triton.one(call, token="s3cret")
    assert refused[0] == 401 and refused[1]["WWW-Authenticate"] == "Bearer"
    assert "bearer token" in json.loads(refused[2])["error"]
    assert wrong[0] == 401 and health[0] == 200
    assert too_big[0] == 413 and "--max-message-bytes" in json.loads(too_big[2])["error"]
    assert sdk_refused["error"]["status"] == "401"
    assert _ok(allowed)["outputs"] == {"embeddings": [1, 9216]}


def _self_signed(directory) -> tuple:
    """A certificate for 127.0.0.1 signed by its own key (the client trusts exactly it)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_options_serve_https_with_the_grpc_certificate(demo_registry_template, tmp_path):
    import ssl

    cert, key = _self_signed(tmp_path)
    with running_server(demo_registry_template, tls_cert=cert, tls_key=key, http_port=0) as secured:
        base = f"127.0.0.1:{secured.server.http_port}"
        trusted = ssl.create_default_context(cafile=str(cert))
        with urllib.request.urlopen(f"https://{base}/v2/health/ready", context=trusted, timeout=30) as response:
            assert response.status == 200 and json.loads(response.read()) == {"ready": True}
        with pytest.raises(urllib.error.URLError):  # a client that trusts nothing of ours
            urllib.request.urlopen(f"https://{base}/v2", context=ssl.create_default_context(), timeout=30)


def test_featurizer_serve_takes_the_http_port_from_the_environment(demo_registry_template):
    """The real CLI process: FEATURIZER_HTTP_PORT=0 picks a port, logged once at start-up."""
    import re
    import time

    from tests.support.servers import ServerProcess

    process = ServerProcess(demo_registry_template, env={"FEATURIZER_HTTP_PORT": "0"})
    try:
        deadline, port = time.monotonic() + 30, None
        while port is None and time.monotonic() < deadline:  # the log line is on stderr, drained by a thread
            found = [re.search(r"v2 HTTP listening on 127\.0\.0\.1:(\d+)", line) for line in process.stderr_lines()]
            port = next((int(m.group(1)) for m in found if m), None)
            if port is None:
                time.sleep(0.05)  # a poll interval, bounded by the deadline
        assert port is not None, process.stderr_lines()[-10:]
        status, _, raw = _http(f"http://127.0.0.1:{port}/v2/models/alexnet/ready")
        assert status == 200 and json.loads(raw) == {"name": "alexnet", "ready": True}
        assert process.terminate() == 0
    finally:
        process.kill()
