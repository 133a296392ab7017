"""The Open Inference Protocol over gRPC, called by tritonclient.grpc from PyPI (its own
venv: it pins protobuf < 7) against a real server, checked against featurizer.v1 on the same
server and images.
"""

from __future__ import annotations

import shutil
import struct

import grpc
import numpy as np
import pytest

from featurizer_client.v2 import grpc_predict_v2_pb2 as v2
from featurizer_client.v2 import grpc_predict_v2_pb2_grpc as v2_grpc
from tests.support.images import encoded_photos, photos
from tests.support.reference import preset_tensor
from tests.support.servers import running_server
from tests.support.triton import (HEAD_LABELS, TOLERANCE, Triton, publish_oip_models, triton_python, v1_embed,
                                  v1_error, v1_predict)


@pytest.fixture(scope="module")
def registry(demo_registry_template, tmp_path_factory):
    root = tmp_path_factory.mktemp("oip-grpc") / "registry"
    shutil.copytree(demo_registry_template, root)
    publish_oip_models(root)
    return root


@pytest.fixture(scope="module")
def triton(server, tmp_path_factory):
    return Triton(triton_python(), "grpc", server.target, tmp_path_factory.mktemp("tritonclient-grpc"))


@pytest.fixture(scope="module")
def jpegs():
    photos_ = encoded_photos("JPEG")
    return [photos_["chelsea"], photos_["rocket"]]


def _ok(result: dict):
    assert "ok" in result, result
    return result["ok"]


def test_live_ready_and_metadata(triton):
    live, ready, server_meta, model_ready, pinned_ready, alexnet, head = triton.run(
        {"op": "live"}, {"op": "ready"}, {"op": "server_metadata"},
        {"op": "model_ready", "model": "alexnet"}, {"op": "model_ready", "model": "alexnet", "version": "1"},
        {"op": "model_metadata", "model": "alexnet"}, {"op": "model_metadata", "model": "objects"})
    assert _ok(live) is True and _ok(ready) is True
    assert _ok(model_ready) is True and _ok(pinned_ready) is True
    assert _ok(server_meta)["name"] == "featurizer" and "binary_tensor_data" in _ok(server_meta)["extensions"]
    meta = _ok(alexnet)
    assert meta["versions"] == ["1"] and meta["platform"] == "featurizer_features"
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
        ("images", "BYTES", ["-1"]), ("pixels", "UINT8", ["-1", "-1", "-1", "3"]),
        ("tensor", "FP32", ["-1", "3", "224", "224"])]  # as_json: protobuf's int64 as strings
    assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == [("embeddings", "FP32", ["-1", "9216"])]
    assert [(o["name"], o["datatype"], o["shape"]) for o in _ok(head)["outputs"]] == [
        ("probabilities", "FP32", ["-1", str(len(HEAD_LABELS))]), ("labels", "BYTES", ["-1", "-1"])]


@pytest.mark.parametrize("shape", [[2], [2, 1]])
def test_jpeg_bytes_embed_as_featurizer_v1(triton, server, jpegs, shape):
    call = triton.infer("alexnet", triton.files_input(jpegs, shape=shape))
    answer = _ok(triton.one(call))
    assert answer["model"] == "alexnet" and answer["version"] == "1" and answer["outputs"] == {"embeddings": [2, 9216]}
    np.testing.assert_allclose(triton.output(call, "embeddings"), v1_embed(server.target, "alexnet", jpegs),
                               rtol=TOLERANCE, atol=TOLERANCE)


def test_uint8_and_fp32_tensors_embed_as_featurizer_v1(triton, server, jpegs):
    pixels = np.stack([photos()["chelsea"][:240, :320], photos()["coffee"][:240, :320]])       # [2, 240, 320, 3]
    tensor = np.concatenate([preset_tensor(j).numpy() for j in jpegs]).astype(np.float32)     # [2, 3, 224, 224]
    by_pixels = triton.infer("alexnet", triton.array_input("pixels", "UINT8", pixels), version="1")
    by_tensor = triton.infer("alexnet", triton.array_input("tensor", "FP32", tensor))
    for result in triton.run(by_pixels, by_tensor):
        _ok(result)
    np.testing.assert_allclose(triton.output(by_pixels, "embeddings"), v1_embed(server.target, "alexnet", list(pixels)),
                               rtol=TOLERANCE, atol=TOLERANCE)
    np.testing.assert_allclose(triton.output(by_tensor, "embeddings"), v1_embed(server.target, "alexnet", list(tensor)),
                               rtol=TOLERANCE, atol=TOLERANCE)


def test_predictions_equal_predict(triton, server, jpegs):
    small = np.stack([photos()["astronaut"][:64, :64], photos()["rocket"][:64, :64]])
    head = triton.infer("objects", triton.files_input(jpegs))
    top2 = triton.infer("objects", triton.files_input(jpegs), outputs=["labels"], parameters={"top_k": 2})
    largenet = triton.infer("largenet10", triton.array_input("pixels", "UINT8", small))
    answers = [_ok(r) for r in triton.run(head, top2, largenet)]
    for call, answer, model, images, k in ((head, answers[0], "objects", jpegs, 3), (top2, answers[1], "objects", jpegs, 2),
                                           (largenet, answers[2], "largenet10", list(small), 5)):
        classes = 3 if model == "objects" else 10
        predictions = v1_predict(server.target, model, images, top_k=classes)  # every class, most probable first
        assert answer["outputs"]["labels"] == [[c.label for c in p.classes[:k]] for p in predictions]
        if call is not top2:
            expected = [[{c.index: c.probability for c in p.classes}[i] for i in range(classes)] for p in predictions]
            np.testing.assert_allclose(triton.output(call, "probabilities"), expected, rtol=TOLERANCE, atol=TOLERANCE)
    assert list(answers[1]["outputs"]) == ["labels"]  # only what was asked for


def test_errors_are_the_protocols_and_the_server_keeps_serving(triton, server, jpegs):
    bad = b"this is not an image"
    unknown, version, bad_image, wrong_type, two_inputs, good = triton.run(
        triton.infer("no-such-model", triton.files_input(jpegs[:1])),
        triton.infer("alexnet", triton.files_input(jpegs[:1]), version="7"),
        triton.infer("alexnet", triton.files_input([bad])),
        triton.infer("alexnet", triton.array_input("images", "INT32", np.zeros((1, 4), np.int32))),
        triton.infer("alexnet", triton.files_input(jpegs[:1]), triton.files_input(jpegs[:1], name="pixels")),
        triton.infer("alexnet", triton.files_input(jpegs[:1])))
    assert unknown["error"] == dict(zip(("status", "message"), ("StatusCode.NOT_FOUND",
                                                                v1_error(server.target, "no-such-model", jpegs[:1])[1])))
    assert version["error"]["status"] == "StatusCode.NOT_FOUND" and "no version 7" in version["error"]["message"]
    code, message = v1_error(server.target, "alexnet", [bad])
    assert bad_image["error"] == {"status": f"StatusCode.{code}", "message": message} and code == "INVALID_ARGUMENT"
    assert wrong_type["error"] == {"status": "StatusCode.INVALID_ARGUMENT",
                                   "message": "input 'images': datatype must be BYTES, got INT32"}
    assert two_inputs["error"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "exactly one input" in two_inputs["error"]["message"]
    assert _ok(good)["outputs"] == {"embeddings": [1, 9216]}


def test_32_concurrent_callers_are_batched_and_get_their_rows(triton, server):
    rng = np.random.default_rng(17)
    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(32)]
    calls = [triton.infer("alexnet", triton.array_input("pixels", "UINT8", image[None])) for image in images]
    batches = server.sample("featurizer_batch_size_count", model="alexnet")
    served = server.sample("featurizer_batch_size_sum", model="alexnet")
    answers = _ok(triton.one({"op": "infer_concurrently", "requests": calls}))
    batches = server.sample("featurizer_batch_size_count", model="alexnet") - batches
    served = server.sample("featurizer_batch_size_sum", model="alexnet") - served
    assert [a["ok"]["outputs"] for a in answers] == [{"embeddings": [1, 9216]}] * 32
    assert served == 32 and batches < 32, (served, batches)  # some forward pass carried several callers
    expected = v1_embed(server.target, "alexnet", images)
    got = np.concatenate([triton.output(call, "embeddings") for call in calls])
    np.testing.assert_allclose(got, expected, rtol=TOLERANCE, atol=TOLERANCE)  # each caller its own row


def test_typed_contents_in_and_out(server, jpegs):
    """Not tritonclient's way (it sends raw contents) but the protocol's other one: elements in
    ``contents`` come back in ``contents``; ``raw_output`` asks for raw outputs anyway."""
    with grpc.insecure_channel(server.target, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        tensor = v2.ModelInferRequest.InferInputTensor(name="images", datatype="BYTES", shape=[2],
                                                      contents=v2.InferTensorContents(bytes_contents=jpegs))
        typed = stub.ModelInfer(v2.ModelInferRequest(model_name="alexnet", id="r1", inputs=[tensor]), timeout=60)
        raw = stub.ModelInfer(v2.ModelInferRequest(model_name="alexnet", inputs=[tensor],
                                                   parameters={"raw_output": v2.InferParameter(bool_param=True)}),
                              timeout=60)
        framed = [struct.pack("<I", len(j)) + j for j in jpegs]
        truncated = v2.ModelInferRequest(model_name="alexnet", raw_input_contents=[b"".join(framed)[:-10]],
                                         inputs=[v2.ModelInferRequest.InferInputTensor(name="images", datatype="BYTES",
                                                                                      shape=[2])])
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(truncated, timeout=60)
    expected = v1_embed(server.target, "alexnet", jpegs)
    assert typed.id == "r1" and not typed.raw_output_contents and list(typed.outputs[0].shape) == [2, 9216]
    np.testing.assert_allclose(np.array(typed.outputs[0].contents.fp32_contents).reshape(2, -1), expected,
                               rtol=TOLERANCE, atol=TOLERANCE)
    np.testing.assert_allclose(np.frombuffer(raw.raw_output_contents[0], "<f4").reshape(2, -1), expected,
                               rtol=TOLERANCE, atol=TOLERANCE)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "BYTES element 1 claims" in refused.value.details()


def test_without_the_token_grpc_is_unauthenticated(demo_registry_template, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    with running_server(demo_registry_template, auth_token_file=token_file) as secured:
        triton = Triton(triton_python(), "grpc", secured.target, tmp_path / "tc")
        call = triton.infer("alexnet", triton.files_input([encoded_photos()["coffee"]]))
        refused, metadata = triton.run(call, {"op": "model_metadata", "model": "alexnet"}, token=None)
        allowed = triton.one(call, token="s3cret")
    assert refused["error"]["status"] == "StatusCode.UNAUTHENTICATED"
    assert "bearer token" in refused["error"]["message"]
    assert metadata["error"]["status"] == "StatusCode.UNAUTHENTICATED"
    assert _ok(allowed)["outputs"] == {"embeddings": [1, 9216]}
