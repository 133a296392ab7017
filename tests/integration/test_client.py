"""The SDK against a real server. Sync and async agree for every input kind, and both
agree with an independent LargeNet run in torch; predictions, models, health, errors, token, TLS."""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from featurizer_client import AsyncFeaturizerClient, FeaturizerClient, FeaturizerError, RetryPolicy, Tls
from tests.support.images import encode, photos
from tests.support.reference import largenet_reference
from tests.support.registries import publish_alexnet, publish_feature_head, publish_largenet, seeded_state
from tests.support.servers import running_server

TOLERANCE = 1e-4
SAME = 1e-6  # float32 rounding of the same rows in differently composed server batches
CLASSES = [f"class{i}" for i in range(10)]
NAMES = ("chelsea", "coffee", "astronaut")


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("client-registry")
    publish_largenet(root, "largenet", num_classes=10, labels=CLASSES, seed=1)
    publish_largenet(root, "binary", num_classes=1, labels=("cat", "dog"), seed=2)
    publish_alexnet(root, "alexnet")
    publish_feature_head(root, "head3", in_features=256, labels=("a", "b", "c"))
    Path(root, "aliases.json").write_text('{"small": "largenet@1"}')
    return root


@pytest.fixture(scope="module")
def arrays() -> np.ndarray:
    return [photos()[n] for n in NAMES]


@pytest.fixture(scope="module")
def reference(arrays) -> np.ndarray:
    state = seeded_state("largenet", {"num_classes": 10}, 1)
    return np.concatenate([largenet_reference(state, a[None]) for a in arrays])


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory, arrays) -> Path:
    root = tmp_path_factory.mktemp("images")
    for i, array in enumerate(arrays):  # lossless, so decoded pixels equal the arrays
        (root / f"{i}.png").write_bytes(encode(array, "PNG"))
    (root / "notes.txt").write_text("not an image: skipped by directory expansion")
    return root


def inputs_of(kind: str, arrays, image_dir: Path):
    files = sorted(image_dir.glob("*.png"))
    return {
        "bytes": lambda: [f.read_bytes() for f in files],
        "path": lambda: [str(f) for f in files],
        "directory": lambda: image_dir,
        "glob": lambda: str(image_dir / "*.png"),
        "numpy": lambda: list(arrays),
        "pil": lambda: [Image.fromarray(a) for a in arrays],
    }[kind]()


async def async_embed(target: str, images, **kwargs) -> np.ndarray:
    async with AsyncFeaturizerClient(target) as client:
        return await client.embed(images, **kwargs)


@pytest.mark.parametrize("kind", ["bytes", "path", "directory", "glob", "numpy", "pil"])
def test_sync_and_async_agree_with_torch_for_each_input_kind(server, arrays, image_dir, reference, kind):
    with FeaturizerClient(server.target) as client:
        X = client.embed(inputs_of(kind, arrays, image_dir), model="largenet", batch_size=2)
    Y = asyncio.run(async_embed(server.target, inputs_of(kind, arrays, image_dir), model="largenet", batch_size=2))
    assert X.shape == (len(NAMES), 10) and X.dtype == np.float32
    assert np.abs(X - Y).max() <= SAME
    assert np.abs(X - reference).max() <= TOLERANCE
    assert np.abs(X[0] - X[1]).max() > 1e-3  # distinct photos, distinct rows


def test_embed_options_reach_the_server(server, arrays, reference):
    with FeaturizerClient(server.target) as client:
        unit = client.embed(arrays, model="small", normalize=True, dtype="float16")
        with pytest.raises(FeaturizerError) as refused:
            client.embed(arrays, model="largenet", layer="conv1")
        with pytest.raises(ValueError, match="pooling.*'median'"):
            client.embed(arrays, model="largenet", pooling="median")
    expected = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    assert unit.dtype == np.float16 and np.abs(unit.astype(np.float32) - expected).max() <= 2e-3
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT and "layer" in refused.value.details


def test_predictions_are_typed_and_match_softmax_and_sigmoid(server, arrays, reference):
    with FeaturizerClient(server.target) as client:
        multi = client.predict(arrays, model="largenet", top_k=3)
        binary = client.predict(arrays, model="binary")
        binary_logit = client.embed(arrays, model="binary")[:, 0]
    softmax = np.exp(reference - reference.max(1, keepdims=True))
    softmax /= softmax.sum(1, keepdims=True)
    for p, probs in zip(multi, softmax):
        order = np.argsort(-probs)[:3]
        assert [c.index for c in p.classes] == order.tolist()
        assert [c.label for c in p.classes] == [CLASSES[i] for i in order]
        assert np.allclose([c.probability for c in p.classes], probs[order], atol=1e-5)
        assert (p.label, p.index) == (CLASSES[order[0]], order[0]) and p.positive_probability is None
    for p, logit in zip(binary, binary_logit):
        sigmoid = 1 / (1 + np.exp(-float(logit)))
        assert p.positive_probability == pytest.approx(sigmoid, abs=1e-5)
        assert {c.label for c in p.classes} == {"cat", "dog"}
        assert p.label == ("dog" if sigmoid > 0.5 else "cat")


def test_predict_can_return_the_backbone_features(server, arrays):
    with FeaturizerClient(server.target) as client:
        predictions = client.predict(arrays[:2], model="head3", include_features=True)
        features = client.embed(arrays[:2], model="alexnet")
    assert all(p.features is not None and p.features.shape == (9216,) for p in predictions)
    assert np.abs(np.stack([p.features for p in predictions]) - features).max() <= TOLERANCE


def test_models_and_health(server):
    async def both():
        async with AsyncFeaturizerClient(server.target) as client:
            return await client.list_models(), await client.get_model("small"), await client.health("largenet")

    with FeaturizerClient(server.target) as client:
        models = client.list_models()
        one = client.get_model("small")
        health = client.health(), client.health("featurizer.v1.Featurizer"), client.health("binary")
    assert [m.name for m in models] == ["alexnet", "binary", "head3", "largenet"]
    largenet = next(m for m in models if m.name == "largenet")
    assert largenet.aliases == ("small",) and largenet.default_version == 1
    version = largenet.versions[0]
    assert (version.state, version.kind, version.architecture) == ("AVAILABLE", "classifier", "largenet")
    assert version.output_shape == (10,) and version.labels == tuple(CLASSES)
    assert (one.name, one.default_version, one.versions) == ("largenet", 1, largenet.versions)  # alias resolved
    assert health == ("SERVING", "SERVING", "SERVING")
    assert asyncio.run(both()) == (models, one, "SERVING")


def test_errors_are_one_type_with_code_and_details(server, arrays):
    async def unknown():
        async with AsyncFeaturizerClient(server.target) as client:
            await client.predict(arrays[:1], model="no-such-model")

    with FeaturizerClient(server.target) as client:
        with pytest.raises(FeaturizerError) as missing:
            client.get_model("no-such-model")
        with pytest.raises(FeaturizerError) as late:
            client.embed(arrays, model="largenet", timeout=1e-4)
        assert client.embed(arrays[:1], model="largenet").shape == (1, 10)  # still serving
    with pytest.raises(FeaturizerError) as missing_async:
        asyncio.run(unknown())
    for error in (missing.value, missing_async.value):
        assert error.code == grpc.StatusCode.NOT_FOUND and "no-such-model" in error.details
    assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_bearer_token(registry, tmp_path, arrays):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    with running_server(registry, auth_token_file=token_file) as server:
        with FeaturizerClient(server.target, token="wrong") as client:
            with pytest.raises(FeaturizerError) as refused:
                client.embed(arrays[:1], model="largenet")
            assert client.health() == "SERVING"  # health stays open for probes
        with FeaturizerClient(server.target, token="s3cret-token") as client:
            assert client.embed(arrays[:1], model="largenet").shape == (1, 10)
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in refused.value.details


def test_mutual_tls(registry, tmp_path, arrays):
    pki = make_pki(tmp_path)
    with running_server(registry, tls_cert=pki["server.crt"], tls_key=pki["server.key"],
                        tls_client_ca=pki["ca.crt"]) as server:
        target = f"localhost:{server.server.port}"
        tls = Tls(pki["ca.crt"], pki["client.crt"], pki["client.key"])
        with FeaturizerClient(target, tls=tls) as client:
            assert client.embed(arrays[:1], model="largenet").shape == (1, 10)
        no_cert = Tls(pki["ca.crt"])
        with FeaturizerClient(target, tls=no_cert, retry=None, wait_for_ready=False, timeout=10) as client:
            with pytest.raises(FeaturizerError) as refused:
                client.embed(arrays[:1], model="largenet")
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE


def make_pki(root: Path) -> dict[str, Path]:
    """A CA, a server certificate for localhost and a client certificate, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "featurizer test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    files = {"ca.crt": ca.public_bytes(serialization.Encoding.PEM)}
    for name, serial in (("server", 2), ("client", 3)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
                .issuer_name(ca_name).public_key(key.public_key()).serial_number(serial)
                .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        files[f"{name}.crt"] = cert.public_bytes(serialization.Encoding.PEM)
        files[f"{name}.key"] = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption())
    paths = {}
    for name, data in files.items():
        paths[name] = root / name
        paths[name].write_bytes(data)
    return paths


def test_retry_policy_is_grpc_service_config():
    from featurizer_client.channel import Connection
    import json

    config = json.loads(Connection("dns:///featurizer-headless:50051", retry=RetryPolicy(max_attempts=4)).service_config())
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    policy = config["methodConfig"][0]["retryPolicy"]
    assert policy["maxAttempts"] == 4 and {"UNAVAILABLE", "RESOURCE_EXHAUSTED"} <= set(policy["retryableStatusCodes"])
    assert "methodConfig" not in json.loads(Connection("x:1", retry=None).service_config())
