"""One bad registry entry fails that version alone, under concurrent good traffic.

A head on a head, a manifest that raises a featurizer bug, a FIFO where a file should be (a hung
mount), a hung registry scan, symlinks out of the root, a directory where model.json should be and
read permission taken away: each version concerned is FAILED with a reason naming it relative to
the root (or, already serving, keeps its loaded copy), and the good callers see 0 errors.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from featurizer_client.tensors import to_proto
from featurizer_client.v1 import featurizer_pb2 as pb
from featurizer_client.v1 import featurizer_pb2_grpc as pb_grpc

from featurizer.architectures import list_builders, register_builder
from featurizer.registry.manifest import Manifest, OutputSpec
from featurizer.inference.loading import INTERNAL_REASON
from featurizer.registry.registry import Registry
from tests.support.bad_inputs import leaks
from tests.support.registries import (copy_version_files, place_version, publish_alexnet, publish_feature_head,
                                      publish_largenet)
from tests.support.servers import ServerProcess, ServerThread, running_server
from tests.support.test_builders import SMALL_INPUT
from tests.support.traffic import running_traffic

POLL_S = "0.3"
DEADLINE_S = 60.0
CALLERS = 8
# Tests run as root, whom file modes do not stop. This server is root without the two capabilities
# that bypass them, so chmod binds it exactly as it binds the pod's uid 10001.
NO_DAC = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search",
          "--inh-caps", "-dac_override,-dac_read_search"]


def image(seed: int, size: int = 32) -> pb.Image:
    return pb.Image(tensor=to_proto(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)))


def good_requests(model: str = "stable", count: int = CALLERS) -> list[pb.PredictRequest]:
    return [pb.PredictRequest(model=model, images=[image(i)]) for i in range(count)]


def versions(stub, model: str) -> dict[int, pb.ModelVersionInfo]:
    return {v.version: v for v in stub.GetModel(pb.GetModelRequest(model=model), timeout=10).versions}


def wait_for(condition: Callable[[], bool], what: str, proc: ServerProcess | None = None) -> None:
    """Poll ``condition`` (each poll a bounded RPC) until true, within DEADLINE_S."""
    started = time.monotonic()
    while not condition():
        assert proc is None or proc.proc.poll() is None, f"server exited while waiting for {what}"
        assert time.monotonic() - started < DEADLINE_S, f"timed out waiting for {what}"
        time.sleep(0.05)


def state_is(stub, model: str, version: int, state: int, reason: str = "") -> Callable[[], bool]:
    def check() -> bool:
        try:
            info = versions(stub, model).get(version)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:  # not scanned yet
                raise
            return False
        return info is not None and info.state == state and reason in info.reason
    return check


def assert_failed_cleanly(stub, root: Path, model: str, version: int, reason: str) -> None:
    """FAILED with ``reason`` in GetModel, ListModels and a pinned call's FAILED_PRECONDITION, and no
    server path in any of them."""
    info = versions(stub, model)[version]
    assert info.state == pb.MODEL_STATE_FAILED and reason in info.reason, (model, info.reason)
    listed = [v.reason for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models if m.name == model
              for v in m.versions if v.version == version]
    with pytest.raises(grpc.RpcError) as failed:
        stub.Predict(pb.PredictRequest(model=model, version=version, images=[image(0)]), timeout=30)
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION and reason in failed.value.details()
    for text in (info.reason, *listed, failed.value.details()):
        assert not leaks(text, root), text


def stop_promptly(proc: ServerProcess, limit_s: float = 20.0) -> float:
    """SIGTERM; the server must exit 0 within ``limit_s``. Returns the seconds it took."""
    started = time.monotonic()
    assert proc.terminate(timeout=limit_s) == 0, proc.stderr_lines()[-20:]
    return time.monotonic() - started


@pytest.fixture
def root(tmp_path) -> Path:
    root = tmp_path / "registry"
    publish_largenet(root, "stable", version=1)
    return root


# ----- 1. a head on a head; an unexpected exception -------------------------------------------------
def test_a_head_on_a_head_fails_alone_at_start_up_and_on_reload(root):
    publish_alexnet(root, "backbone", layer="conv1")
    publish_feature_head(root, "head", backbone="backbone", in_features=64, labels=("a", "b"))
    publish_feature_head(root, "head-on-head", backbone="head", in_features=64, labels=("a", "b"))
    proc = ServerProcess(root, "--poll-interval", POLL_S, "--log-level", "warning")  # exited 1 here before
    try:
        with grpc.insecure_channel(proc.target) as channel:
            stub = pb_grpc.FeaturizerStub(channel)
            reason = "'backbone' head@1 is a head; a head sits on a features or classifier model"
            assert_failed_cleanly(stub, root, "head-on-head", 1, reason)
            with running_traffic(proc.target, good_requests(), callers=CALLERS) as traffic:
                assert traffic.wait_for_more()
                publish_feature_head(root, "head-on-head", backbone="head", in_features=64, labels=("a", "b"))
                # Before: LOADING forever with an empty reason (AttributeError in the warm-up).
                wait_for(state_is(stub, "head-on-head", 2, pb.MODEL_STATE_FAILED, reason), "version 2 FAILED", proc)
                assert traffic.wait_for_more()
            assert traffic.errors == [] and min(traffic.calls) > 0, (traffic.errors[:3], traffic.calls)
            assert_failed_cleanly(stub, root, "head-on-head", 2, reason)
            for model in ("stable", "backbone", "head"):
                assert versions(stub, model)[1].state == pb.MODEL_STATE_AVAILABLE, model
            assert stub.Predict(pb.PredictRequest(model="head", images=[image(0)]), timeout=30).predictions
        stop_promptly(proc)
    finally:
        proc.kill()


class FeaturizerBug(LookupError):
    """Stands for a bug in featurizer's own loading code: an exception type no load step expects."""


def _buggy(**params) -> None:
    raise FeaturizerBug("a builder bug: featurizer's own code raised")


if "test_buggy" not in list_builders():
    register_builder("test_buggy")(_buggy)


def publish_buggy(root: Path, version: int) -> int:
    manifest = Manifest(kind="features", architecture="test_buggy", input=SMALL_INPUT, output=OutputSpec(shape=(3,)))
    return Registry(root).publish("buggy", manifest, {"scale": torch.ones(1)}, version=version)


def test_an_unexpected_exception_fails_that_version_with_a_generic_reason_and_a_logged_traceback(root, caplog):
    publish_buggy(root, 1)
    caplog.set_level(logging.WARNING, logger="featurizer.inference.models")
    with running_server(root) as server, grpc.insecure_channel(server.target) as channel:  # raised here before
        stub = pb_grpc.FeaturizerStub(channel)
        assert_failed_cleanly(stub, root, "buggy", 1, INTERNAL_REASON)
        with running_traffic(server.target, good_requests(), callers=CALLERS) as traffic:
            assert traffic.wait_for_more()
            publish_buggy(root, 2)
            server.reload()  # raised FeaturizerBug before
            assert traffic.wait_for_more()
        assert traffic.errors == [] and min(traffic.calls) > 0, (traffic.errors[:3], traffic.calls)
        assert_failed_cleanly(stub, root, "buggy", 2, INTERNAL_REASON)
    tracebacks = [r for r in caplog.records if r.exc_info and r.exc_info[0] is FeaturizerBug]
    assert [r.getMessage() for r in tracebacks] == [f"model buggy@{v}: unexpected error while loading" for v in (1, 2)]


# ----- 2. a file that blocks; a scan that hangs -----------------------------------------------------
def test_a_fifo_in_a_version_fails_it_at_once_while_serving_listing_and_sigterm_go_on(root):
    proc = ServerProcess(root, "--poll-interval", POLL_S, "--log-level", "warning")
    try:
        with grpc.insecure_channel(proc.target) as channel:
            stub = pb_grpc.FeaturizerStub(channel)
            with running_traffic(proc.target, good_requests(), callers=CALLERS) as traffic:
                assert traffic.wait_for_more()
                # A FIFO behaves as a hung network mount: opening it for reading waits for a writer.
                place_version(root, "fifo", 1, lambda d: os.mkfifo(d / "model.json"))

                def fifo_weights(directory: Path) -> None:
                    copy_version_files(root / "stable/1")(directory)
                    (directory / "weights.safetensors").unlink()
                    os.mkfifo(directory / "weights.safetensors")
                place_version(root, "fifo", 2, fifo_weights)
                started = time.monotonic()
                # Before: the scan read model.json on the event loop: every RPC here timed out.
                wait_for(state_is(stub, "fifo", 2, pb.MODEL_STATE_FAILED), "both FIFO versions FAILED", proc)
                failed_after = time.monotonic() - started
                listed = {m.name for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models}
                assert traffic.wait_for_more()
            assert traffic.errors == [] and min(traffic.calls) > 0, (traffic.errors[:3], traffic.calls)
            assert listed == {"stable", "fifo"}
            for version, file in ((1, "model.json"), (2, "weights.safetensors")):
                assert_failed_cleanly(stub, root, "fifo", version, f"fifo/{version}/{file}: unreadable (not a regular file")
        took = stop_promptly(proc)
        print(f"\nFIFO versions FAILED {failed_after:.2f} s after publishing; {sum(traffic.calls)} good calls, "
              f"0 errors; SIGTERM exit in {took:.2f} s")
    finally:
        proc.kill()


class HungScanRegistry(Registry):
    """The real registry, whose scan, while ``hanging`` is set, first blocks in a real ``open`` of a
    FIFO (as a read of a hung network mount blocks in the kernel) until the test opens its other end."""

    def __init__(self, root: Path, fifo: Path) -> None:
        super().__init__(root)
        self.fifo = fifo
        self.hanging = threading.Event()

    def scan(self):
        if self.hanging.is_set():
            with open(self.fifo, "rb"):  # blocks until a writer opens the FIFO
                pass
        return super().scan()

    def answer(self) -> None:
        """The mount answers again: the stuck open returns."""
        self.hanging.clear()
        with open(self.fifo, "wb"):  # does not block: the stuck scan is the reader
            pass


def test_a_hung_registry_scan_neither_stops_serving_nor_piles_up_threads_nor_blocks_shutdown(root, tmp_path):
    fifo = tmp_path / "hung-mount"
    os.mkfifo(fifo)
    server = ServerThread(root, registry_timeout=1.0)
    registry = server.server.manager.registry = HungScanRegistry(root, fifo)
    reads = server.server.manager.reads
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.FeaturizerStub(channel)
            with running_traffic(server.target, good_requests(), callers=CALLERS) as traffic:
                assert traffic.wait_for_more()
                publish_largenet(root, "stable", version=2)
                registry.hanging.set()
                started = time.monotonic()
                server.reload()  # returns after the 1 s bound: the scan is skipped, nothing changes
                waited = time.monotonic() - started
                assert reads.stuck() == ["registry scan"]
                threads = threading.active_count()
                server.reload()  # refused at once while that scan is stuck: no second stuck thread
                assert threading.active_count() == threads and reads.stuck() == ["registry scan"]
                assert sorted(versions(stub, "stable")) == [1]
                assert traffic.wait_for_more()
                registry.answer()
                wait_for(lambda: reads.stuck() == [], "the stuck scan to return")
                server.reload()
                assert versions(stub, "stable")[2].state == pb.MODEL_STATE_AVAILABLE
                assert traffic.wait_for_more()
            assert traffic.errors == [] and min(traffic.calls) > 0, (traffic.errors[:3], traffic.calls)
            assert 1.0 <= waited < 10, waited
        registry.hanging.set()
        server.reload()  # stuck again: the server stops with this scan still blocked
        started = time.monotonic()
    finally:
        server.stop()
    assert time.monotonic() - started < 10 and reads.stuck() == ["registry scan"]
    registry.answer()
    # A stuck read does not hold process exit either: tests/unit/test_registry_files.py.


# ----- 3. symlinks out of the root; 4. server paths in reasons ---------------------------------------
def test_symlinked_registry_files_stay_inside_the_root(root, tmp_path):
    outside = tmp_path / "outside"
    publish_largenet(outside, "largenet", version=1)
    (outside / "aliases.json").write_text('{"prod": "stable"}')
    with running_server(root) as server, grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.FeaturizerStub(channel)
        with running_traffic(server.target, good_requests(), callers=CALLERS) as traffic:
            assert traffic.wait_for_more()

            def escaping_manifest(directory: Path) -> None:  # weights inside, manifest outside
                copy_version_files(outside / "largenet/1")(directory)
                (directory / "model.json").unlink()
                (directory / "model.json").symlink_to(outside / "largenet/1/model.json")
            place_version(root, "escaped", 1, escaping_manifest)

            def linked_inside(directory: Path) -> None:  # symlinks that stay inside are fine
                for name in ("model.json", "weights.safetensors"):
                    (directory / name).symlink_to(Path("../../stable/1") / name)
            place_version(root, "linked", 1, linked_inside)
            (root / "aliases.json").symlink_to(outside / "aliases.json")
            server.reload()
            assert traffic.wait_for_more()
        assert traffic.errors == [] and min(traffic.calls) > 0, (traffic.errors[:3], traffic.calls)
        assert_failed_cleanly(stub, root, "escaped", 1, "escaped/1/model.json: resolves outside the registry root")
        assert versions(stub, "linked")[1].state == pb.MODEL_STATE_AVAILABLE
        with pytest.raises(grpc.RpcError) as alias:
            stub.Predict(pb.PredictRequest(model="prod", images=[image(0)]), timeout=30)
        assert alias.value.code() == grpc.StatusCode.NOT_FOUND  # aliases.json outside the root: not read


def test_failure_reasons_name_files_relative_to_the_root(root):
    with running_server(root) as server, grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.FeaturizerStub(channel)
        with running_traffic(server.target, good_requests(), callers=CALLERS) as traffic:
            assert traffic.wait_for_more()

            def manifest_is_a_directory(directory: Path) -> None:  # EISDIR: an OSError root gets too
                copy_version_files(root / "stable/1")(directory)
                (directory / "model.json").unlink()
                (directory / "model.json").mkdir()
            place_version(root, "isdir", 1, manifest_is_a_directory)
            server.reload()
            assert traffic.wait_for_more()
        assert traffic.errors == [] and min(traffic.calls) > 0, (traffic.errors[:3], traffic.calls)
        # Before: "[Errno 21] Is a directory: '/tmp/.../registry/isdir/1/model.json'".
        assert_failed_cleanly(stub, root, "isdir", 1, "isdir/1/model.json: unreadable (Is a directory)")
        with pytest.raises(grpc.RpcError) as unavailable:
            stub.Predict(pb.PredictRequest(model="isdir", images=[image(0)]), timeout=30)
        assert unavailable.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "isdir/1/model.json: unreadable" in unavailable.value.details()
        assert not leaks(unavailable.value.details(), root)


# ----- 5. read permission taken away from the version being served ------------------------------------
class NoDacServer(ServerProcess):
    """``featurizer serve`` under NO_DAC (see above); otherwise as ServerProcess."""

    def __init__(self, registry: Path, *flags: str) -> None:
        args = [*NO_DAC, sys.executable, "-m", "featurizer", "serve", "--host", "127.0.0.1", "--port", "0",
                "--metrics-port", "0", "--log-format", "json", "--registry", str(registry), *flags]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._stderr: list[str] = []
        self._drain = threading.Thread(target=self._stderr.extend, args=(self.proc.stderr,), daemon=True)
        self._drain.start()
        self.port, self.metrics_port = self._wait_listening()
        self.target = f"127.0.0.1:{self.port}"


def test_losing_read_permission_keeps_the_loaded_version_serving(root):
    publish_largenet(root, "shoes", version=1)
    proc = NoDacServer(root, "--poll-interval", POLL_S, "--log-level", "warning")
    try:
        with grpc.insecure_channel(proc.target) as channel:
            stub = pb_grpc.FeaturizerStub(channel)
            good = good_requests("shoes", 4) + good_requests("stable", 4)
            with running_traffic(proc.target, good, callers=CALLERS) as traffic:
                assert traffic.wait_for_more()
                os.chmod(root / "shoes/1", 0)  # the serving version's directory

                def unreadable(directory: Path) -> None:  # a new version nobody may read
                    copy_version_files(root / "stable/1")(directory)
                    os.chmod(directory, 0)
                place_version(root, "shoes", 2, unreadable)
                kept = "serving the copy loaded earlier; reloading its changed files failed: shoes/1/model.json: " \
                       "unreadable (Permission denied)"
                wait_for(state_is(stub, "shoes", 1, pb.MODEL_STATE_AVAILABLE, kept), "version 1 kept", proc)
                wait_for(state_is(stub, "shoes", 2, pb.MODEL_STATE_FAILED), "version 2 FAILED", proc)
                assert traffic.wait_for_more()  # before: 3,396 UNAVAILABLE vs 92 OK in 3 s
                os.chmod(root / "shoes/1", 0o755)
                wait_for(state_is(stub, "shoes", 1, pb.MODEL_STATE_AVAILABLE), "version 1 as loaded", proc)
                wait_for(lambda: versions(stub, "shoes")[1].reason == "", "the reload note cleared", proc)
                assert traffic.wait_for_more()
            assert traffic.errors == [] and min(traffic.calls) > 0, (traffic.errors[:3], traffic.calls)
            assert_failed_cleanly(stub, root, "shoes", 2, "shoes/2/model.json: unreadable (Permission denied)")
            assert proc.scrape("featurizer_model_load_failures_total", model="shoes") >= 2
            print(f"\nread permission taken from shoes/1 while serving it: {sum(traffic.calls)} good calls "
                  f"({sum(traffic.calls[:4])} to shoes), 0 errors")
        stop_promptly(proc)
    finally:
        for version in ("1", "2"):
            if (root / "shoes" / version).exists():
                os.chmod(root / "shoes" / version, 0o755)
        proc.kill()
