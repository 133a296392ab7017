"""The bearer-token check comes before any request bytes are parsed.

A caller without the token sends bytes protobuf refuses (invalid UTF-8 in ``model``), raw, through
``channel.unary_unary``/``stream_stream`` with no serializer. It must get UNAUTHENTICATED with the
fixed message, not an INVALID_ARGUMENT that quotes what it sent; the call is still counted and
logged as UNAUTHENTICATED. With the token, the same bytes get the parser's INVALID_ARGUMENT.
"""

from __future__ import annotations

import logging
import time

import grpc
import pytest

from featurizer_client.v1 import featurizer_pb2 as pb
from tests.support.registries import publish_largenet
from tests.support.servers import running_server

TOKEN = "auth-first-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
EMBED = "/featurizer.v1.Featurizer/Embed"
EMBED_STREAM = "/featurizer.v1.Featurizer/EmbedStream"
DENIED = "missing or invalid bearer token (metadata 'authorization: Bearer <token>')"


def eventually(condition, what: str, timeout: float = 10) -> None:
    """The server counts and logs a call just after the caller got its status: poll briefly."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)  # polling the server thread's bookkeeping, with a deadline


def garbage_embed() -> bytes:
    """An EmbedRequest whose ``model`` is not UTF-8: protobuf cannot parse it."""
    raw = pb.EmbedRequest(model="alQxnet").SerializeToString().replace(b"alQxnet", b"al\xffxnet")
    with pytest.raises(Exception):
        pb.EmbedRequest.FromString(raw)
    return raw


def garbage_stream_item() -> bytes:
    raw = pb.EmbedStreamRequest(id="i0", request=pb.EmbedRequest(model="alQxnet")).SerializeToString()
    return raw.replace(b"alQxnet", b"al\xffxnet")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("auth-first")
    publish_largenet(root / "registry", "largenet")
    token_file = root / "token"
    token_file.write_text(TOKEN + "\n")
    with running_server(root / "registry", auth_token_file=token_file) as handle:
        yield handle


def _unary(channel: grpc.Channel, data: bytes, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        channel.unary_unary(EMBED)(data, timeout=30, **kwargs)  # no serializers: raw bytes both ways
    return error.value


def _stream(channel: grpc.Channel, data: bytes, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        list(channel.stream_stream(EMBED_STREAM)(iter([data, data]), timeout=30, **kwargs))
    return error.value


def _says_nothing_about_the_request(error: grpc.RpcError) -> None:
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (error.code(), error.details())
    assert error.details() == DENIED
    for leak in ("model", "UTF-8", "al\\xff", "parse", "EmbedRequest"):
        assert leak not in error.details()


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer wrong"),)], ids=["no-token", "wrong-token"])
def test_unauthenticated_garbage_unary_gets_unauthenticated_not_a_parse_error(server, metadata, caplog):
    before = server.sample("featurizer_requests_total", method="Embed", model="", code="UNAUTHENTICATED")
    with grpc.insecure_channel(server.target) as channel, caplog.at_level(logging.INFO, "featurizer.access"):
        _says_nothing_about_the_request(_unary(channel, garbage_embed(), metadata=metadata))
        eventually(lambda: any(r.name == "featurizer.access" for r in caplog.records), "no access line")
    assert server.sample("featurizer_requests_total", method="Embed", model="", code="UNAUTHENTICATED") == before + 1
    assert server.sample("featurizer_requests_total", method="Embed", model="", code="INVALID_ARGUMENT") == 0
    logged = [r.fields for r in caplog.records if r.name == "featurizer.access"]
    assert [(f["method"], f["status"], f["model"]) for f in logged] == [("Embed", "UNAUTHENTICATED", "")]


def test_unauthenticated_garbage_stream_gets_unauthenticated_not_a_parse_error(server, caplog):
    before = server.sample("featurizer_requests_total", method="EmbedStream", model="", code="UNAUTHENTICATED")
    with grpc.insecure_channel(server.target) as channel, caplog.at_level(logging.INFO, "featurizer.access"):
        _says_nothing_about_the_request(_stream(channel, garbage_stream_item()))
        eventually(lambda: any(r.name == "featurizer.access" for r in caplog.records), "no access line")
    after = server.sample("featurizer_requests_total", method="EmbedStream", model="", code="UNAUTHENTICATED")
    assert after == before + 1
    logged = [r.fields for r in caplog.records if r.name == "featurizer.access"]
    assert [(f["method"], f["status"]) for f in logged] == [("EmbedStream", "UNAUTHENTICATED")]


def test_with_the_token_the_same_bytes_reach_the_parser(server):
    """The denial is the token's doing: an authenticated caller's garbage is INVALID_ARGUMENT."""
    with grpc.insecure_channel(server.target) as channel:
        unary = _unary(channel, garbage_embed(), metadata=AUTH)
        assert unary.code() == grpc.StatusCode.INVALID_ARGUMENT and "model: not valid UTF-8" in unary.details()
        stream = _stream(channel, garbage_stream_item(), metadata=AUTH)
        assert stream.code() == grpc.StatusCode.INVALID_ARGUMENT and "not valid UTF-8" in stream.details()
        good = channel.unary_unary(EMBED, request_serializer=pb.EmbedRequest.SerializeToString,
                                   response_deserializer=pb.EmbedResponse.FromString)
        with pytest.raises(grpc.RpcError) as no_images:  # authenticated and parsed: the servicer answers
            good(pb.EmbedRequest(model="largenet"), timeout=30, metadata=AUTH)
        assert no_images.value.code() == grpc.StatusCode.INVALID_ARGUMENT
