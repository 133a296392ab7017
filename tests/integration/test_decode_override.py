"""A request's own JPEG decode mode (featurizer.v1's ``decode`` field, the v2 ``decode`` parameter,
the SDK's ``decode=`` and the CLI's ``--decode``) against a real server, on a phone-size photo.

``decode fast`` on an exact-mode model gives the fast-mode model's rows, bit for bit, and both
equal an independent reference: Pillow's reduced-scale decode (``draft``) then torchvision's
preset and AlexNet. ``decode exact`` on a fast-mode model gives the exact model's rows.
"""

from __future__ import annotations

import asyncio
import io
import json
import struct
import subprocess
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from PIL import Image

from featurizer_client import AsyncFeaturizerClient, EmbedOptions, FeaturizerClient
from featurizer_client.v1 import featurizer_pb2 as pb
from featurizer_client.v2 import grpc_predict_v2_pb2 as v2
from featurizer_client.v2 import grpc_predict_v2_pb2_grpc as v2_grpc
from featurizer.registry.manifest import DecodeMode, InputSpec
from tests.support.phone_photos import sized_photos
from tests.support.reference import reference_features, torchvision_alexnet
from tests.support.registries import publish_alexnet, publish_feature_head
from tests.support.rpc import TIMEOUT_S
from tests.support.scripts import console_script
from tests.support.servers import running_server

PHOTO = "coffee@phone"   # 4032x3024: fast decoding reads it at 1/4 scale
TOLERANCE = 1e-4         # as test_decode_modes.py: our preprocessing against torchvision's
FAST_MIN_COSINE = 0.9999  # the worst measured cosine of fast to exact (docs/performance.md)
LABELS = ("cat", "cup", "rocket")


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("decode-override")
    publish_alexnet(root, "exact")
    publish_alexnet(root, "fast", input=InputSpec(decode=DecodeMode.FAST))
    for backbone in ("exact", "fast"):  # the same head (same seed) on each backbone
        publish_feature_head(root, f"objects-{backbone}", backbone=backbone, labels=LABELS, seed=3)
    return root


@pytest.fixture(scope="module")
def server(registry):
    with running_server(registry, http_port=0) as handle:
        yield handle


@pytest.fixture(scope="module")
def client(server):
    with FeaturizerClient(server.target) as c:
        yield c


@pytest.fixture(scope="module")
def photo() -> bytes:
    return sized_photos()[PHOTO]


@pytest.fixture(scope="module")
def exact_rows(client, photo) -> np.ndarray:
    return client.embed([photo], model="exact")


@pytest.fixture(scope="module")
def fast_rows(client, photo) -> np.ndarray:
    return client.embed([photo], model="fast")


def draft_reference(data: bytes) -> np.ndarray:
    """Pillow's DCT-domain decode at the smallest scale keeping both sides at least twice the
    preset's resize (256), then torchvision's preset and AlexNet: what fast mode promises."""
    image = Image.open(io.BytesIO(data))
    side = 2 * InputSpec().resize
    image.draft("RGB", (side, side))
    assert min(image.size) >= side and image.size != Image.open(io.BytesIO(data)).size  # really reduced
    return reference_features(torchvision_alexnet(), np.asarray(image.convert("RGB")))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_fast_on_an_exact_model_is_the_fast_models_answer(client, photo, exact_rows, fast_rows):
    overridden = client.embed([photo], model="exact", decode="fast")
    assert np.array_equal(overridden, fast_rows)
    assert np.abs(overridden[0] - draft_reference(photo)).max() <= TOLERANCE
    assert not np.array_equal(overridden, exact_rows)  # a different decode, not the same answer relabelled
    assert cosine(overridden, exact_rows) >= FAST_MIN_COSINE


def test_the_async_client_takes_the_mode_too(server, photo, exact_rows, fast_rows):
    async def both() -> tuple[np.ndarray, list]:
        async with AsyncFeaturizerClient(server.target) as client:
            return (await client.embed([photo], model="fast", decode="exact"),
                    await client.predict([photo], model="objects-exact", decode="fast", include_features=True))

    embedded, (predicted,) = asyncio.run(both())
    assert np.array_equal(embedded, exact_rows) and np.array_equal(predicted.features, fast_rows[0])


def test_exact_on_a_fast_model_is_the_exact_answer(client, photo, exact_rows):
    overridden = client.embed([photo], model="fast", decode="exact")
    assert np.array_equal(overridden, exact_rows)
    assert np.abs(overridden[0] - reference_features(torchvision_alexnet(), photo)).max() <= TOLERANCE


def test_predict_takes_the_mode_for_its_backbone_pass(client, photo, fast_rows):
    overridden, = client.predict([photo], model="objects-exact", decode="fast", include_features=True)
    fast_head, = client.predict([photo], model="objects-fast", include_features=True)
    assert overridden.features is not None and np.array_equal(overridden.features, fast_rows[0])
    assert [(c.label, c.probability) for c in overridden.classes] == [(c.label, c.probability) for c in fast_head.classes]


def test_stream_items_take_the_mode(client, photo, fast_rows):
    embedded = client.embed_many([photo, photo], model="exact", decode="fast")
    assert np.array_equal(embedded.values, np.concatenate([fast_rows, fast_rows]))
    predicted = client.predict_many([photo], model="objects-exact", decode="fast", features=EmbedOptions())
    assert np.array_equal(predicted.values[0].features, fast_rows[0])


def test_get_model_and_list_models_report_the_models_own_mode(client, stub):
    assert stub.GetModel(pb.GetModelRequest(model="exact"), timeout=TIMEOUT_S).versions[0].input.decode == "exact"
    assert stub.GetModel(pb.GetModelRequest(model="fast"), timeout=TIMEOUT_S).versions[0].input.decode == "fast"
    listed = {m.name: m.versions[0].decode for m in client.list_models()}
    assert listed == {"exact": "exact", "fast": "fast", "objects-exact": "", "objects-fast": ""}  # heads: no input


def test_an_unknown_mode_is_invalid_argument_naming_decode(client, stub, photo):
    image = pb.Image(encoded=photo)
    calls = [lambda: stub.Embed(pb.EmbedRequest(model="exact", images=[image], decode=7), timeout=TIMEOUT_S),
             lambda: stub.Predict(pb.PredictRequest(model="objects-exact", images=[image], decode=7), timeout=TIMEOUT_S)]
    for call in calls:
        with pytest.raises(grpc.RpcError) as refused:
            call()
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details().startswith("decode: unknown value 7"), refused.value.details()
    items = [pb.EmbedStreamRequest(id="bad", request=pb.EmbedRequest(model="exact", images=[image], decode=7)),
             pb.EmbedStreamRequest(id="good", request=pb.EmbedRequest(model="exact", images=[image], decode=pb.DECODE_FAST))]
    bad, good = stub.EmbedStream(iter(items), timeout=TIMEOUT_S)
    assert bad.error.code_name == "INVALID_ARGUMENT" and bad.error.message.startswith("decode:")
    assert good.WhichOneof("result") == "response"
    with pytest.raises(ValueError, match="decode: expected 'exact', 'fast' or None"):
        client.embed([photo], model="exact", decode="quick")  # type: ignore[arg-type]


def test_v2_grpc_parameter_gives_the_featurizer_v1_rows(server, photo, fast_rows):
    tensor = v2.ModelInferRequest.InferInputTensor(name="images", datatype="BYTES", shape=[1],
                                                  contents=v2.InferTensorContents(bytes_contents=[photo]))
    with grpc.insecure_channel(server.target) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)

        def infer(decode: str) -> v2.ModelInferResponse:
            return stub.ModelInfer(v2.ModelInferRequest(model_name="exact", inputs=[tensor], parameters={
                "decode": v2.InferParameter(string_param=decode)}), timeout=TIMEOUT_S)

        answer = infer("fast")
        with pytest.raises(grpc.RpcError) as refused:
            infer("quick")
    assert np.array_equal(np.array(answer.outputs[0].contents.fp32_contents, np.float32).reshape(1, -1), fast_rows)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "parameters decode: expected one of exact, fast, got 'quick'"


def _post(url: str, body: bytes, headers: dict) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_v2_http_parameter_gives_the_featurizer_v1_rows(server, photo, fast_rows):
    """Triton's binary extension from urllib: the JPEG after the JSON header, raw FP32 back."""
    url = f"http://127.0.0.1:{server.server.http_port}/v2/models/exact/infer"
    element = struct.pack("<I", len(photo)) + photo

    def infer(decode: str) -> tuple[int, dict, bytes]:
        header = json.dumps({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1],
                                         "parameters": {"binary_data_size": len(element)}}],
                             "parameters": {"decode": decode, "binary_data_output": True}}).encode()
        return _post(url, header + element, {"Content-Type": "application/octet-stream",
                                             "Inference-Header-Content-Length": str(len(header))})

    status, headers, raw = infer("fast")
    assert status == 200, raw[:300]
    size = int(headers["Inference-Header-Content-Length"])
    assert np.array_equal(np.frombuffer(raw[size:], "<f4").reshape(1, -1), fast_rows)
    status, _, raw = infer("EXACT")
    assert status == 400 and json.loads(raw)["error"] == "parameters decode: expected one of exact, fast, got 'EXACT'"


def test_client_cli_decode_flag(server, photo, fast_rows, tmp_path):
    image = tmp_path / "phone.jpg"
    image.write_bytes(photo)
    out = tmp_path / "x.npy"
    cli = str(console_script("featurizer-client"))
    embedded = subprocess.run([cli, "embed", str(image), "-o", str(out), "--model", "exact", "--decode", "fast",
                               "--target", server.target], capture_output=True, text=True, timeout=120)
    assert embedded.returncode == 0, embedded.stderr
    assert np.array_equal(np.load(out), fast_rows)
    predicted = subprocess.run([cli, "predict", str(image), "--model", "objects-exact", "--decode", "fast", "--json",
                                "--target", server.target], capture_output=True, text=True, timeout=120)
    assert predicted.returncode == 0, predicted.stderr
    with FeaturizerClient(server.target) as client:
        expected, = client.predict([photo], model="objects-fast")
    assert [(c["label"], c["probability"]) for c in json.loads(predicted.stdout)[0]["classes"]] == [
        (c.label, c.probability) for c in expected.classes]
    refused = subprocess.run([cli, "embed", str(image), "-o", str(out), "--decode", "quick"],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--decode: invalid choice: 'quick'" in refused.stderr
