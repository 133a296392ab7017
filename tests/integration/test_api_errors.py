"""Every row of the error table over real gRPC, while a concurrent good client sees no error.

Each test makes one bad call, checks its status code and that the message names the bad field and
value, then waits until the good client (a thread calling Embed on AlexNet in a loop) has been
served again after the bad call.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable

import grpc
import numpy as np
import pytest

from featurizer_client.tensors import to_proto
from featurizer_client.v1 import featurizer_pb2 as pb
from featurizer_client.v1 import featurizer_pb2_grpc as pb_grpc
from tests.support.images import encode, photos
from tests.support.registries import publish_feature_head
from tests.support.servers import running_server
from tests.support.test_builders import GATES, Gate, publish_test_model

LIMITS = {"max_images_per_request": 4, "max_image_bytes": 300_000, "max_image_pixels": 1_000_000,
          "max_message_bytes": 4 * 1024 * 1024, "max_queue": 2}
SMALL = np.zeros((16, 16, 3), np.uint8)
Code = grpc.StatusCode


class GoodClient(threading.Thread):
    """Calls Embed on AlexNet in a loop until stopped; records every error it sees."""

    def __init__(self, target: str, image: bytes) -> None:
        super().__init__(name="good-client", daemon=True)
        self.target, self.image = target, image
        self.errors: list[str] = []
        self.served = 0
        self.changed = threading.Condition()
        self.stopping = threading.Event()

    def run(self) -> None:
        with grpc.insecure_channel(self.target) as channel:
            stub = pb_grpc.FeaturizerStub(channel)
            request = pb.EmbedRequest(model="alexnet", images=[pb.Image(encoded=self.image)])
            while not self.stopping.is_set():
                try:
                    stub.Embed(request, timeout=60)
                except grpc.RpcError as error:
                    self.errors.append(f"{error.code().name}: {error.details()}")
                with self.changed:
                    self.served += 1
                    self.changed.notify_all()

    def served_again(self, timeout: float = 60) -> bool:
        """True once a call that started after this one was asked has finished."""
        with self.changed:
            target = self.served + 2  # the call in progress may have started before the bad call
            return self.changed.wait_for(lambda: self.served >= target, timeout)


class AccessLogWatcher(logging.Handler):
    """Collects the server's access-log records; ``wait_for`` blocks until one matches."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[dict] = []
        self.changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self.changed:
            self.records.append(getattr(record, "fields", {}))
            self.changed.notify_all()

    def wait_for(self, match: Callable[[dict], bool], timeout: float = 30) -> dict:
        with self.changed:
            assert self.changed.wait_for(lambda: any(match(r) for r in self.records), timeout)
            return next(r for r in self.records if match(r))


@pytest.fixture(scope="module")
def server(demo_registry_template, tmp_path_factory):
    root = tmp_path_factory.mktemp("errors") / "registry"
    shutil.copytree(demo_registry_template, root)
    publish_feature_head(root, "objects")
    for name in ("overload", "deadline", "unload"):
        publish_test_model(root, f"gated-{name}", "test_gated", {"gate": f"api-{name}"})
    publish_test_model(root, "broken", "test_raising", {"after": 0})   # warm-up fails: FAILED
    publish_test_model(root, "raising", "test_raising", {"after": 1})  # loads, then every forward raises
    with running_server(root, **LIMITS) as handle:
        handle.root = root
        yield handle


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.target, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]) as channel:
        yield pb_grpc.FeaturizerStub(channel)


@pytest.fixture(scope="module")
def good(server):
    client = GoodClient(server.target, encode(photos()["chelsea"]))
    client.start()
    yield client
    client.stopping.set()
    client.join(60)


@pytest.fixture
def access_log():
    watcher = AccessLogWatcher()
    logger = logging.getLogger("featurizer.access")
    level = logger.level
    logger.addHandler(watcher)
    logger.setLevel(logging.INFO)
    yield watcher
    logger.removeHandler(watcher)
    logger.setLevel(level)


@pytest.fixture
def gate(request):
    """A Gate installed for the gated model the test names; always released at the end."""
    name = request.param
    GATES[name] = held = Gate()
    yield held
    held.release.set()
    GATES.pop(name, None)


def _expect(call: Callable[[], object], code: grpc.StatusCode, *names: str) -> str:
    with pytest.raises(grpc.RpcError) as error:
        call()
    assert error.value.code() == code, error.value.details()
    for name in names:
        assert name in error.value.details()
    return error.value.details()


def _embed(stub, *images: pb.Image, model: str = "alexnet", version: int = 0, timeout: float = 60, **options):
    return lambda: stub.Embed(pb.EmbedRequest(model=model, version=version, images=list(images),
                                              options=pb.EmbedOptions(**options)), timeout=timeout)


def _tensor(array: np.ndarray) -> pb.Image:
    return pb.Image(tensor=to_proto(array))


def _big_png() -> bytes:
    return encode(np.zeros((1000, 1200, 3), np.uint8), "PNG")  # 1.2 Mpx, a few kB of bytes


JPEG = encode(photos()["coffee"])
ROWS = {  # name -> (request(stub), expected code, strings the message must contain)
    "unknown model": (lambda s: _embed(s, pb.Image(encoded=JPEG), model="no-such-model"),
                      Code.NOT_FOUND, ["'no-such-model'", "alexnet"]),
    "unknown version": (lambda s: _embed(s, pb.Image(encoded=JPEG), version=7), Code.NOT_FOUND, ["version 7"]),
    "undecodable image": (lambda s: _embed(s, pb.Image(encoded=JPEG), pb.Image(encoded=b"\x89PNG\r\n\x1a\nnope")),
                          Code.INVALID_ARGUMENT, ["images[1]", "PNG"]),
    "wrong-shape image": (lambda s: _embed(s, _tensor(np.zeros((8, 8, 4), np.uint8))),
                          Code.INVALID_ARGUMENT, ["images[0]", "[8, 8, 4]"]),
    "too many images": (lambda s: _embed(s, *[pb.Image(encoded=JPEG)] * 5),
                        Code.INVALID_ARGUMENT, ["images", "5 images", "limit of 4"]),
    "image too large in bytes": (lambda s: _embed(s, pb.Image(encoded=b"\xff\xd8\xff" + bytes(400_000))),
                                 Code.INVALID_ARGUMENT, ["images[0]", "400003 bytes", "300000"]),
    "image too large in pixels": (lambda s: _embed(s, pb.Image(encoded=_big_png())),
                                  Code.INVALID_ARGUMENT, ["images[0]", "1200x1000", "1000000"]),
    "raw tensor of a wrong dtype": (lambda s: _embed(s, _tensor(np.zeros((224, 224, 3), np.float16))),
                                    Code.INVALID_ARGUMENT, ["images[0].tensor", "DTYPE_FLOAT16"]),
    "raw tensor of a wrong shape": (lambda s: _embed(s, _tensor(np.zeros((3, 100, 100), np.float32))),
                                    Code.INVALID_ARGUMENT, ["images[0]", "[3, 224, 224]", "[3, 100, 100]"]),
    "raw tensor bytes disagree with shape": (
        lambda s: _embed(s, pb.Image(tensor=pb.Tensor(dtype=pb.DTYPE_UINT8, shape=[2, 2, 3], data=b"12345"))),
        Code.INVALID_ARGUMENT, ["images[0].tensor", "12 bytes", "got 5"]),
    "bad option: layer": (lambda s: _embed(s, pb.Image(encoded=JPEG), layer="conv9"),
                          Code.INVALID_ARGUMENT, ["options.layer", "conv9"]),
    "bad option: output dtype": (lambda s: _embed(s, pb.Image(encoded=JPEG), output_dtype=pb.DTYPE_UINT8),
                                 Code.INVALID_ARGUMENT, ["options.output_dtype", "DTYPE_UINT8"]),
    "bad option: top_k": (lambda s: lambda: s.Predict(pb.PredictRequest(model="objects", images=[pb.Image(encoded=JPEG)],
                                                                      top_k=9), timeout=60),
                          Code.INVALID_ARGUMENT, ["top_k", "got 9"]),
    "Predict on a features model": (lambda s: lambda: s.Predict(pb.PredictRequest(model="alexnet",
                                                                                images=[pb.Image(encoded=JPEG)]), timeout=60),
                                    Code.FAILED_PRECONDITION, ["alexnet", "features model"]),
    "message above --max-message-bytes": (lambda s: _embed(s, pb.Image(encoded=bytes(5 * 1024 * 1024))),
                                          Code.RESOURCE_EXHAUSTED, [str(4 * 1024 * 1024)]),
    "FAILED version": (lambda s: _embed(s, _tensor(SMALL), model="broken", version=1),
                       Code.FAILED_PRECONDITION, ["broken", "version 1", "FAILED", "warm-up"]),
    "no AVAILABLE version": (lambda s: _embed(s, _tensor(SMALL), model="broken"),
                             Code.UNAVAILABLE, ["broken", "no AVAILABLE version"]),
}


@pytest.mark.parametrize("row", list(ROWS))
def test_error_table_row(server, stub, good, row):
    make, code, names = ROWS[row]
    _expect(make(stub), code, *names)
    assert good.served_again() and good.errors == []


@pytest.mark.parametrize("gate", ["api-overload"], indirect=True)
def test_overload_is_resource_exhausted_at_once(server, stub, good, gate):
    first = stub.Embed.future(pb.EmbedRequest(model="gated-overload", images=[_tensor(SMALL)]), timeout=60)
    assert gate.entered.wait(30)  # its forward pass holds the device; the queue limit is 2 images
    dropped = server.sample("featurizer_dropped_total", model="gated-overload", reason="overload")
    _expect(_embed(stub, *[_tensor(SMALL)] * 3, model="gated-overload"), Code.RESOURCE_EXHAUSTED,
            "gated-overload", "limit 2")
    assert server.sample("featurizer_dropped_total", model="gated-overload", reason="overload") == dropped + 3
    gate.release.set()
    assert first.result().embeddings.shape == [1, 3]
    assert good.served_again() and good.errors == []


@pytest.mark.parametrize("gate", ["api-deadline"], indirect=True)
def test_deadline_is_exceeded_and_the_expired_work_is_not_done(server, stub, good, gate, access_log):
    images = lambda: server.sample("featurizer_batch_size_sum", model="gated-deadline")  # noqa: E731
    dropped = lambda: sum(server.sample("featurizer_dropped_total", model="gated-deadline", reason=r)  # noqa: E731
                          for r in ("deadline", "cancelled"))
    first = stub.Embed.future(pb.EmbedRequest(model="gated-deadline", images=[_tensor(SMALL)]), timeout=60)
    assert gate.entered.wait(30)
    before_images, before_dropped = images(), dropped()
    _expect(_embed(stub, _tensor(SMALL), _tensor(SMALL), model="gated-deadline", timeout=0.5), Code.DEADLINE_EXCEEDED)
    late = access_log.wait_for(lambda r: r.get("model") == "gated-deadline" and r.get("status") != "OK")
    assert late["status"] == "DEADLINE_EXCEEDED"  # the server saw the deadline, not just the client
    gate.release.set()
    first.result()
    stub.Embed(pb.EmbedRequest(model="gated-deadline", images=[_tensor(SMALL)]), timeout=60)  # queued after it
    assert images() == before_images + 2  # the first call and the last: the expired two never ran
    assert dropped() == before_dropped + 2
    assert good.served_again() and good.errors == []


@pytest.mark.parametrize("gate", ["api-unload"], indirect=True)
def test_unloading_version_is_unavailable_while_calls_in_flight_finish(server, stub, good, gate):
    first = stub.Embed.future(pb.EmbedRequest(model="gated-unload", images=[_tensor(SMALL)]), timeout=60)
    assert gate.entered.wait(30)
    shutil.rmtree(server.root / "gated-unload" / "1")
    server.reload()
    _expect(_embed(stub, _tensor(SMALL), model="gated-unload", version=1), Code.UNAVAILABLE,
            "gated-unload", "version 1", "UNLOADING")
    gate.release.set()
    assert first.result().version == 1  # the call in flight finished on the unloading version
    assert good.served_again() and good.errors == []


def test_unexpected_error_is_internal_without_a_traceback(server, stub, good, caplog):
    caplog.set_level(logging.ERROR)
    details = _expect(_embed(stub, _tensor(SMALL), model="raising"), Code.INTERNAL, "server log")
    assert "Traceback" not in details and "on purpose" not in details and "RuntimeError" not in details
    logged = [r for r in caplog.records if r.exc_info and "on purpose" in str(r.exc_info[1])]
    assert logged, "the traceback must reach the server log"
    assert good.served_again() and good.errors == []
