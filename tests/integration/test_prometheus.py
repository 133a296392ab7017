"""A real Prometheus (Debian package) scrapes a real server every second; the counts it
stores are exactly the traffic sent, per gRPC status code.

Clients are built with ``retry=None``: one call is one RPC, so the expected counts are exact.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests

from featurizer_client import FeaturizerClient, FeaturizerError
from tests.support.registries import publish_largenet
from tests.support.servers import running_server

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
DEADLINE_S = 60
DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "featurizer.json"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Prometheus:
    """``prometheus`` as a child process scraping one target every second, on a temp TSDB."""

    def __init__(self, workdir: Path, target: str) -> None:
        config = workdir / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                          "scrape_configs:\n  - job_name: featurizer\n"
                          f"    static_configs:\n      - targets: ['{target}']\n")
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = (workdir / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address={self.url.removeprefix('http://')}"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        """Poll /-/ready of the external process until it answers 200 (deadline: DEADLINE_S)."""
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"prometheus exited with {self.proc.returncode}"
            try:
                if requests.get(f"{self.url}/-/ready", timeout=5).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)  # polling an external process, not synchronising our own threads
        raise AssertionError(f"prometheus not ready within {DEADLINE_S}s")

    def query(self, expr: str) -> list[dict]:
        """Instant query (Prometheus is ready); [] while it has no sample yet."""
        reply = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5)
        reply.raise_for_status()
        return reply.json()["data"]["result"]

    def wait_for(self, expr: str, expected: float) -> list[dict]:
        """Poll an external process until ``expr`` has the value ``expected`` (deadline: DEADLINE_S)."""
        deadline = time.monotonic() + DEADLINE_S
        result: list[dict] = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if result and float(result[0]["value"][1]) == expected:
                return result
            time.sleep(0.2)  # polling an external process, not synchronising our own threads
        raise AssertionError(f"{expr} never reached {expected} within {DEADLINE_S}s; last: {result}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def scraped_server(tmp_path_factory) -> Iterator[tuple]:
    """One server and its Prometheus for the module; only the first test sends traffic."""
    tmp_path = tmp_path_factory.mktemp("prometheus")
    registry = tmp_path / "registry"
    publish_largenet(registry, "largenet")
    with running_server(registry, metrics_port=0) as server:
        prometheus = Prometheus(tmp_path, f"127.0.0.1:{server.server.metrics_port}")
        try:
            prometheus.wait_ready()
            yield server, prometheus
        finally:
            prometheus.stop()


def test_prometheus_stores_exactly_the_traffic_sent(scraped_server):
    server, prometheus = scraped_server
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    sent = {"OK": 4, "INVALID_ARGUMENT": 2, "NOT_FOUND": 3}
    with FeaturizerClient(server.target, retry=None) as client:
        for _ in range(sent["OK"]):
            client.embed(images, model="largenet")
        for _ in range(sent["INVALID_ARGUMENT"]):
            with pytest.raises(FeaturizerError) as bad:
                client.embed([images[0], b"\x89PNG broken"], model="largenet")
            assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
        for _ in range(sent["NOT_FOUND"]):
            with pytest.raises(FeaturizerError) as missing:
                client.embed(images[:1], model="no-such-model")
            assert missing.value.code == grpc.StatusCode.NOT_FOUND

    # the last scrape that matters is the one whose total equals everything sent
    prometheus.wait_for('sum(featurizer_requests_total{job="featurizer"})', sum(sent.values()))
    by_code = {r["metric"]["code"]: float(r["value"][1])
               for r in prometheus.query('sum by (code) (featurizer_requests_total{method="Embed"})')}
    assert by_code == {code: float(n) for code, n in sent.items()}
    by_model = {(r["metric"]["model"], r["metric"]["code"]): float(r["value"][1])
                for r in prometheus.query("featurizer_requests_total")}
    assert by_model == {("largenet", "OK"): sent["OK"], ("largenet", "INVALID_ARGUMENT"): sent["INVALID_ARGUMENT"],
                        ("unknown", "NOT_FOUND"): sent["NOT_FOUND"]}
    images_served = prometheus.query('featurizer_images_total{model="largenet"}')
    assert float(images_served[0]["value"][1]) == sent["OK"] * len(images)
    assert float(prometheus.query('up{job="featurizer"}')[0]["value"][1]) == 1
    # what Prometheus stored is what the server's own registry says
    assert server.sample("featurizer_requests_total", method="Embed", model="largenet", code="OK") == sent["OK"]


def test_every_dashboard_query_is_valid_promql_for_a_real_prometheus(scraped_server):
    _, prometheus = scraped_server
    board = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for panel in board["panels"] for t in panel["targets"]]
    assert queries
    for query in queries:
        promql = query.replace("$__rate_interval", "1m").replace("$job", ".*").replace("$model", ".*")
        prometheus.query(promql)  # raises on HTTP 400: a query Prometheus cannot parse
    with pytest.raises(requests.HTTPError):
        prometheus.query("sum by (code) (rate(featurizer_requests_total[1m])")  # the check can fail
