"""A second ``featurizer serve`` on a busy port refuses to start.

gRPC sets SO_REUSEPORT by default: a second server on the same port used to start silently and
take a share of the new connections (7 of 20 reached one with an empty registry). Now it exits 1
with one line naming the port, for the gRPC port and for the metrics port alike.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from featurizer_client.v1 import featurizer_pb2 as pb
from featurizer_client.v1 import featurizer_pb2_grpc as pb_grpc
from tests.support.registries import publish_largenet
from tests.support.servers import ServerProcess

CONNECTIONS = 20


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """The server already on the ports: it serves ``largenet``."""
    root = tmp_path_factory.mktemp("ports") / "registry"
    publish_largenet(root, "largenet")
    server = ServerProcess(root)
    try:
        yield server
    finally:
        server.kill()


def second_serve(empty_registry: Path, *flags: str) -> subprocess.CompletedProcess:
    """Another real ``python -m featurizer serve`` (an empty registry: it would know no model)."""
    empty_registry.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "featurizer", "serve", "--host", "127.0.0.1", "--log-format", "json",
                           "--registry", str(empty_registry), *flags],
                          capture_output=True, text=True, timeout=120)


def _refused_with_one_line(done: subprocess.CompletedProcess, flag: str, port: int) -> None:
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "featurizer listening" not in done.stdout
    lines = done.stderr.splitlines()
    env = "FEATURIZER_" + flag.removeprefix("--").replace("-", "_").upper()
    assert lines == [f"featurizer: error: {flag} (or {env}): cannot listen on 127.0.0.1:{port} "
                     f"(Address already in use); is another server running there?"], lines


def test_a_second_server_on_the_grpc_port_refuses_to_start(first, tmp_path):
    _refused_with_one_line(second_serve(tmp_path / "empty", "--port", str(first.port), "--metrics-port", "0"),
                           "--port", first.port)
    # every fresh connection still reaches the first server (and its registry)
    for _ in range(CONNECTIONS):
        with grpc.insecure_channel(first.target) as channel:
            models = pb_grpc.FeaturizerStub(channel).ListModels(pb.ListModelsRequest(), timeout=30).models
            assert [m.name for m in models] == ["largenet"]


def test_a_second_server_on_the_metrics_port_refuses_to_start(first, tmp_path):
    _refused_with_one_line(second_serve(tmp_path / "empty", "--port", "0", "--metrics-port", str(first.metrics_port)),
                           "--metrics-port", first.metrics_port)
    assert first.scrape("featurizer_build_info") == 1  # the first one's /metrics is untouched


def test_the_first_server_is_unharmed_and_exits_cleanly(first):
    assert first.proc.poll() is None
    assert first.terminate() == 0
    assert not [line for line in first.stderr_lines() if "Traceback" in line]
