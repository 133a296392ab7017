"""Fixtures for integration modules: a real server on the module's own ``registry`` fixture."""

from __future__ import annotations

import grpc
import pytest

from featurizer_client.v1 import featurizer_pb2_grpc as pb_grpc
from tests.support.servers import running_server


@pytest.fixture(scope="module")
def server(registry):
    """A real server (127.0.0.1, ephemeral port) on the ``registry`` fixture of the test module."""
    with running_server(registry) as handle:
        yield handle


@pytest.fixture(scope="module")
def stub(server):
    """A raw featurizer.v1 stub on ``server``, for tests of the wire API itself."""
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.FeaturizerStub(channel)
