"""The SDK against real servers over gRPC: an unreachable target fails fast
naming it (sync and async) while a server coming up inside the connect window is still reached
(and a server lost after connecting is waited for up to the call's deadline, then named);
``positive_probability`` 0.0 is an answer, not "absent"; GetModel shows aliases; the SDK's default
target is the CLI's; an unknown health service is named."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from featurizer_client import AsyncFeaturizerClient, FeaturizerClient, FeaturizerError
from featurizer_client.channel import DEFAULT_TARGET, default_target
from featurizer_client.cli import build_parser
from featurizer_client.v1 import featurizer_pb2 as pb
from tests.support.registries import publish_largenet, seeded_state
from tests.support.servers import ServerProcess, ServerThread, free_port

IMAGES = np.random.default_rng(3).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
LOGIT = -200.0  # float64 sigmoid ~1e-87: rounds to exactly 0.0 in the float32 field (below about -104)


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("defects-registry")
    publish_largenet(root, "largenet", num_classes=3, labels=("a", "b", "c"), seed=1)
    state = seeded_state("largenet", {"num_classes": 1}, 2)
    state["fc2.bias"].fill_(LOGIT)  # every logit near -200: a confident, real "negative"
    publish_largenet(root, "surely-not", num_classes=1, labels=("cat", "dog"), state=state)
    Path(root, "aliases.json").write_text('{"small": "largenet@1", "tiny": "small", "prod": "largenet"}')
    return root


# ----- 1. an unreachable target --------------------------------------------------------------
def test_unreachable_target_fails_fast_with_unavailable_naming_it():
    target = f"127.0.0.1:{free_port()}"  # nobody listens there
    start = time.monotonic()
    with FeaturizerClient(target, timeout=60) as client:  # the default connect window (5 s)
        with pytest.raises(FeaturizerError) as embed:
            client.embed(IMAGES, model="largenet")
    elapsed = time.monotonic() - start
    assert embed.value.code == grpc.StatusCode.UNAVAILABLE
    assert f"cannot reach featurizer at {target}" in embed.value.details
    assert elapsed < 30, elapsed  # not the 60 s call timeout


def test_unreachable_target_fails_fast_in_the_async_client_too():
    target = f"127.0.0.1:{free_port()}"

    async def models():
        async with AsyncFeaturizerClient(target, timeout=60, connect_timeout=2) as client:
            await client.list_models()

    start = time.monotonic()
    with pytest.raises(FeaturizerError) as failed:
        asyncio.run(models())
    assert failed.value.code == grpc.StatusCode.UNAVAILABLE
    assert f"cannot reach featurizer at {target}" in failed.value.details
    assert time.monotonic() - start < 30


def test_fail_fast_calls_name_the_target_too():
    target = f"127.0.0.1:{free_port()}"
    with FeaturizerClient(target, timeout=60, wait_for_ready=False) as client:
        with pytest.raises(FeaturizerError) as failed:
            client.health()
    assert failed.value.code == grpc.StatusCode.UNAVAILABLE
    assert f"cannot reach featurizer at {target}" in failed.value.details


def test_a_call_shorter_than_the_window_ends_at_its_own_deadline():
    target = f"127.0.0.1:{free_port()}"
    with FeaturizerClient(target, connect_timeout=30) as client:
        with pytest.raises(FeaturizerError) as failed:
            client.get_model("largenet", timeout=1)
    assert failed.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and target in failed.value.details


@pytest.mark.slow  # one `featurizer serve` start-up
def test_a_server_that_comes_up_inside_the_connect_window_is_reached(registry):
    port = free_port()
    server = None
    with FeaturizerClient(f"127.0.0.1:{port}", timeout=120, connect_timeout=90) as client, \
            ThreadPoolExecutor(1) as pool:
        job = pool.submit(client.embed, IMAGES, model="largenet")  # waits: nothing listens yet
        try:
            server = ServerProcess(registry, port=port)
            X = job.result(120)
        finally:
            if server is not None:
                server.kill()
    assert X.shape == (len(IMAGES), 3)


def test_a_server_lost_for_a_whole_deadline_is_named_and_later_calls_fail_fast(registry):
    handle = ServerThread(registry)
    with FeaturizerClient(handle.target, connect_timeout=2) as client:
        assert client.health() == "SERVING"  # connected: from now on a lost server is waited for
        handle.stop()
        with pytest.raises(FeaturizerError) as lost:
            client.health(timeout=3)  # waited for, up to its deadline, as for a restart
        start = time.monotonic()
        with pytest.raises(FeaturizerError) as again:
            client.health(timeout=60)
        elapsed = time.monotonic() - start
    assert lost.value.code == grpc.StatusCode.UNAVAILABLE and "connection was lost" in lost.value.details
    assert again.value.code == grpc.StatusCode.UNAVAILABLE and "no connection within 2 s" in again.value.details
    assert handle.target in lost.value.details and handle.target in again.value.details
    assert elapsed < 30, elapsed


# ----- 2. GetModel's aliases, unknown health services ------------------------------------------
def test_get_model_shows_the_aliases_list_models_shows(server):
    async def async_one():
        async with AsyncFeaturizerClient(server.target) as client:
            return await client.get_model("largenet")

    with FeaturizerClient(server.target) as client:
        listed = {m.name: m for m in client.list_models()}
        by_name, by_alias = client.get_model("largenet"), client.get_model("tiny")
    assert by_name.aliases == ("prod", "small", "tiny")  # "tiny" reaches largenet through "small"
    assert listed["largenet"] == by_name == by_alias == asyncio.run(async_one())
    assert listed["surely-not"].aliases == ()


def test_unknown_health_service_is_named(server):
    with FeaturizerClient(server.target) as client:
        with pytest.raises(FeaturizerError) as unknown:
            client.health("nope")
    assert unknown.value.code == grpc.StatusCode.NOT_FOUND
    assert "'nope'" in unknown.value.details and "featurizer.v1.Featurizer" in unknown.value.details


# ----- 3. positive_probability 0.0 ------------------------------------------------------------
def test_a_sigmoid_that_rounds_to_zero_is_still_a_positive_probability(server, stub):
    with FeaturizerClient(server.target) as client:
        binary = client.predict(IMAGES, model="surely-not")
        multi = client.predict(IMAGES, model="largenet")
    assert [p.positive_probability for p in binary] == [0.0] * len(IMAGES)  # not None
    assert all(p.label == "cat" and p.probability == 1.0 for p in binary)
    assert all(p.positive_probability is None for p in multi)
    image = pb.Image(tensor=_tensor(IMAGES[0]))  # on the wire, presence (not value) tells a binary model
    binary_raw = stub.Predict(pb.PredictRequest(model="surely-not", images=[image]), timeout=60).predictions[0]
    multi_raw = stub.Predict(pb.PredictRequest(model="largenet", images=[image]), timeout=60).predictions[0]
    assert binary_raw.HasField("positive_probability") and binary_raw.positive_probability == 0.0
    assert not multi_raw.HasField("positive_probability")


def _tensor(array: np.ndarray) -> pb.Tensor:
    return pb.Tensor(dtype=pb.DTYPE_UINT8, shape=list(array.shape), data=array.tobytes())


# ----- 4. one default target for SDK and CLI -------------------------------------------------
def test_sdk_and_cli_default_to_featurizer_target_then_localhost(server, monkeypatch):
    monkeypatch.delenv("FEATURIZER_TARGET", raising=False)
    with FeaturizerClient() as client:
        assert client.target == DEFAULT_TARGET == "localhost:50051"
    assert build_parser().parse_args(["models"]).target == DEFAULT_TARGET
    monkeypatch.setenv("FEATURIZER_TARGET", server.target)

    async def async_health():
        async with AsyncFeaturizerClient() as client:
            return client.target, await client.health()

    with FeaturizerClient() as client:
        assert (client.target, client.health()) == (server.target, "SERVING")
    assert asyncio.run(async_health()) == (server.target, "SERVING")
    assert build_parser().parse_args(["models"]).target == default_target() == server.target
