"""Metrics, logs, alerts' inputs and the dashboard say what happened.

- a call through an alias is counted under the model the alias resolved to, not "unknown";
- a stream whose caller left is CANCELLED in metrics and log, with no traceback and no
  "Task exception was never retrieved" (a real ``featurizer serve`` process, its stderr read whole);
- a stream's access line counts its per-item failures by code;
- the counters alerts watch exist at 0 before their first event;
- the dashboard reads its Prometheus from a datasource variable and shows CPU.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import logging
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

from featurizer.metrics import DROP_REASONS
from featurizer.registry.registry import Registry
from featurizer.rpc.servicer import _ordered
from featurizer_client.inputs import to_image
from featurizer_client.v1 import featurizer_pb2 as pb
from featurizer_client.v1 import featurizer_pb2_grpc as pb_grpc
from tests.support.registries import publish_largenet
from tests.support.servers import ServerProcess, running_server

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DEADLINE_S = 30


def image(seed: int = 0) -> pb.Image:
    return to_image(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Path:
    """largenet, an alias to it, an alias pinned to its version 1, and a version that cannot load."""
    root = tmp_path_factory.mktemp("truth") / "registry"
    publish_largenet(root, "largenet")
    publish_largenet(root, "broken")
    weights = root / "broken" / "1" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")  # sha256 no longer matches
    Registry(root).set_alias("prod", "largenet")
    Registry(root).set_alias("pinned", "largenet@1")
    return root


def eventually(condition, what: str, timeout: float = 10) -> None:
    """The server counts and logs a failed call just after the caller got its status: poll briefly."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)  # polling the server thread's bookkeeping, with a deadline


def _access_lines(caplog, method: str) -> list[dict]:
    return [r.fields for r in caplog.records if r.name == "featurizer.access" and r.fields["method"] == method]


def _requests(server, model: str, code: str = "OK", method: str = "Embed") -> float:
    return server.sample("featurizer_requests_total", method=method, model=model, code=code)


# ----- aliases ---------------------------------------------------------------------------

def test_calls_through_an_alias_are_counted_under_the_model_it_resolves_to(server, caplog):
    before = {m: _requests(server, m) for m in ("largenet", "unknown", "prod", "pinned")}
    duration = server.sample("featurizer_request_duration_seconds_count", method="Embed", model="largenet")
    with grpc.insecure_channel(server.target) as channel, caplog.at_level(logging.INFO, "featurizer.access"):
        stub = pb_grpc.FeaturizerStub(channel)
        for model in ("prod", "pinned", "largenet"):
            assert stub.Embed(pb.EmbedRequest(model=model, images=[image()]), timeout=DEADLINE_S).version == 1
        with pytest.raises(grpc.RpcError) as missing:
            stub.Embed(pb.EmbedRequest(model="no-such-model", images=[image()]), timeout=DEADLINE_S)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        eventually(lambda: len(_access_lines(caplog, "Embed")) == 4, "the NOT_FOUND call was not logged")
    assert _requests(server, "largenet") == before["largenet"] + 3
    assert _requests(server, "unknown") == before["unknown"]  # OK calls: none of them unknown
    assert _requests(server, "unknown", "NOT_FOUND") >= 1
    assert server.metrics.get_sample_value("featurizer_requests_total",
                                           {"protocol": "featurizer.v1", "method": "Embed", "model": "prod",
                                            "code": "OK"}) is None
    assert server.sample("featurizer_request_duration_seconds_count", method="Embed", model="largenet") == duration + 3
    # the access log keeps what the caller asked for
    assert [f["model"] for f in _access_lines(caplog, "Embed")] == ["prod", "pinned", "largenet", "no-such-model"]


# ----- streams ---------------------------------------------------------------------------

def test_a_stream_access_line_counts_its_item_errors_by_code(server, caplog):
    items = [pb.EmbedStreamRequest(id="good", request=pb.EmbedRequest(model="largenet", images=[image()])),
             pb.EmbedStreamRequest(id="bad", request=pb.EmbedRequest(model="largenet",
                                                                     images=[pb.Image(encoded=b"\x89PNG broken")])),
             pb.EmbedStreamRequest(id="lost", request=pb.EmbedRequest(model="no-such-model", images=[image()])),
             pb.EmbedStreamRequest(id="worse", request=pb.EmbedRequest(model="largenet",
                                                                       images=[pb.Image(encoded=b"GIF8 broken")]))]
    with grpc.insecure_channel(server.target) as channel, caplog.at_level(logging.INFO, "featurizer.access"):
        answers = list(pb_grpc.FeaturizerStub(channel).EmbedStream(iter(items), timeout=DEADLINE_S))
        clean = list(pb_grpc.FeaturizerStub(channel).EmbedStream(iter(items[:1]), timeout=DEADLINE_S))
        eventually(lambda: len(_access_lines(caplog, "EmbedStream")) == 2, "a stream was not logged")
    assert [a.WhichOneof("result") for a in answers] == ["response", "error", "error", "error"]
    assert len(clean) == 1
    streams = _access_lines(caplog, "EmbedStream")
    assert [(f["status"], f["images"], f["item_errors"]) for f in streams] == [
        ("OK", 4, {"INVALID_ARGUMENT": 2, "NOT_FOUND": 1}), ("OK", 1, {})]
    assert all("item_errors" not in f for f in _access_lines(caplog, "Embed"))


def test_a_cancelled_stream_is_cancelled_in_metrics_and_log_with_no_traceback(registry):
    """The caller leaves mid-stream (its request iterator never ends): CANCELLED, nothing else."""
    server = ServerProcess(registry)
    try:
        def endless():
            for i in itertools.count():
                yield pb.EmbedStreamRequest(id=f"i{i}", request=pb.EmbedRequest(model="largenet", images=[image(i)]))

        with grpc.insecure_channel(server.target) as channel:
            call = pb_grpc.FeaturizerStub(channel).EmbedStream(endless(), timeout=120,
                                                                 metadata=(("x-request-id", "leaves-early"),))
            for answered, _ in enumerate(call, 1):
                if answered == 3:
                    break
            call.cancel()
            deadline = time.monotonic() + DEADLINE_S
            while server.scrape("featurizer_requests_total", method="EmbedStream") == 0:
                assert time.monotonic() < deadline, "the cancelled stream was never counted"
                time.sleep(0.1)  # polling another process's /metrics, not synchronising our own threads
            # the server still serves after it
            ok = pb_grpc.FeaturizerStub(channel).Embed(pb.EmbedRequest(model="largenet", images=[image()]),
                                                       timeout=DEADLINE_S)
            assert ok.version == 1
        assert server.scrape("featurizer_requests_total", method="EmbedStream", code="CANCELLED") == 1
        assert server.scrape("featurizer_requests_total", method="EmbedStream", code="INTERNAL") == 0
        assert server.scrape("featurizer_requests_total", method="EmbedStream") == 1
        assert server.scrape("featurizer_in_flight_requests", method="EmbedStream") == 0
        assert server.terminate() == 0
        lines = server.stderr_lines()
    finally:
        server.kill()
    entries = [json.loads(line) for line in lines if line.strip()]
    assert [e for e in entries if e["level"] in ("error", "critical")] == []
    text = "\n".join(lines)
    for bad in ("Traceback", "never retrieved", "GeneratorExit", "unexpected error", "ExecuteBatchError"):
        assert bad not in text, bad
    left = [e for e in entries if e.get("request_id") == "leaves-early"]
    assert [(e["method"], e["status"]) for e in left] == [("EmbedStream", "CANCELLED")]
    assert left[0]["images"] >= 3


def test_a_stream_whose_reader_fails_once_the_caller_left_leaves_no_unretrieved_error(caplog):
    """``_ordered`` itself, on one event loop: the caller leaves, and reading its finished RPC
    fails (grpc raises ExecuteBatchError for an operation on a call that is over). That error is
    the caller's departure, not something asyncio should log as "never retrieved" later."""
    async def scenario() -> None:
        async def requests():
            yield pb.EmbedStreamRequest(id="first", request=pb.EmbedRequest(model="m"))
            try:
                await asyncio.Event().wait()  # the caller sends nothing more...
            except asyncio.CancelledError:
                raise RuntimeError("read on an RPC that is over") from None  # ...and then the read fails

        async def handle(request, deadline):
            return request

        answers = _ordered(requests(), handle, None)
        assert (await answers.__anext__())[0] == "first"
        reader = next(t for t in asyncio.all_tasks() if t is not asyncio.current_task())
        await answers.aclose()  # the caller left
        await asyncio.wait({reader})  # until the reader is done, without retrieving its outcome
        assert reader.done() and not reader.cancelled()
        del reader

    with caplog.at_level(logging.ERROR, "asyncio"):
        asyncio.run(scenario())
        gc.collect()  # an unretrieved task exception is reported when the task is collected
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


# ----- series that alerts watch exist at 0 -------------------------------------------------

def test_alerted_counters_start_at_zero_for_every_known_label_set(server):
    for reason in DROP_REASONS:
        assert server.metrics.get_sample_value("featurizer_dropped_total", {"model": "largenet", "reason": reason}) == 0
    assert server.metrics.get_sample_value("featurizer_model_load_failures_total", {"model": "largenet"}) == 0
    assert server.metrics.get_sample_value("featurizer_model_load_failures_total", {"model": "broken"}) == 1
    # a model that never got a batcher has no drop series; an alias is no model
    assert server.metrics.get_sample_value("featurizer_dropped_total", {"model": "broken", "reason": "overload"}) is None
    assert server.metrics.get_sample_value("featurizer_model_load_failures_total", {"model": "prod"}) is None


def test_a_model_published_later_gets_its_series_at_zero_on_the_next_scan(tmp_path):
    root = tmp_path / "registry"
    publish_largenet(root, "first")
    with running_server(root) as server:
        assert server.metrics.get_sample_value("featurizer_model_load_failures_total", {"model": "later"}) is None
        publish_largenet(root, "later")
        server.reload()
        assert server.metrics.get_sample_value("featurizer_model_load_failures_total", {"model": "later"}) == 0
        assert server.metrics.get_sample_value("featurizer_dropped_total", {"model": "later", "reason": "overload"}) == 0


# ----- the dashboard -----------------------------------------------------------------------

def _dashboard() -> dict:
    return json.loads((DEPLOY / "grafana" / "dashboards" / "featurizer.json").read_text())


def test_the_dashboard_reads_prometheus_from_a_datasource_variable():
    board = _dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    datasource = variables["datasource"]
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")
    assert board["templating"]["list"][0] is datasource  # defined before the variables that query it
    expected = {"type": "prometheus", "uid": "${datasource}"}
    users = [v for v in board["templating"]["list"] if v["type"] == "query"]
    users += board["panels"] + [t for p in board["panels"] for t in p.get("targets", ())]
    assert users and all(u["datasource"] == expected for u in users)
    assert "uid\": \"prometheus\"" not in json.dumps(board)  # no hard-coded datasource left anywhere
    inputs = board["__inputs"]
    assert [(i["type"], i["pluginId"]) for i in inputs] == [("datasource", "prometheus")]
    # the shipped provisioning still resolves the variable: a default datasource of type prometheus
    provisioned = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert [d["type"] for d in provisioned["datasources"] if d.get("isDefault")] == ["prometheus"]


def test_the_process_panel_shows_cpu_as_well_as_memory():
    panel = next(p for p in _dashboard()["panels"] if p["title"] == "Process memory / CPU")
    exprs = [t["expr"] for t in panel["targets"]]
    assert any(e.startswith("rate(process_cpu_seconds_total") for e in exprs), exprs
    assert any("process_resident_memory_bytes" in e for e in exprs)
    cpu = next(t["refId"] for t in panel["targets"] if "process_cpu_seconds_total" in t["expr"])
    override = next(o for o in panel["fieldConfig"]["overrides"] if o["matcher"]["options"] == cpu)
    assert {"id": "unit", "value": "short"} in override["properties"]  # cores, not bytes
