"""``FeaturizerClient``: the blocking SDK, one object owning one channel and its stubs."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Callable, Optional, Union

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .channel import (DEFAULT_CONNECT_TIMEOUT_S, Connection, Reach, RetryPolicy, Tls, connectivity, default_target,
                      wait_until_ready)
from .chunking import DEFAULT_BATCH_SIZE, DEFAULT_MAX_IN_FLIGHT, Progress, chunks, concat_rows, ordered_calls, plan
from . import bulk
from .bulk import Collected, embed_spec, predict_spec
from .errors import FeaturizerError
from .inputs import ImageLike
from .jobs import DEFAULT_COMMIT_EVERY, Job, Results, Summary, drive
from .outputs import OutputPaths
from .sources import items_of
from .window import DEFAULT_BULK_IN_FLIGHT, DEFAULT_STREAMS, Failure, OnError, Result, Window
from .messages import (DecodeName, DTypeName, EmbedOptions, ModelInfo, PoolingName, Prediction, embed_request,
                       decode_to_proto, embeddings_of, health_error, model_of, models_of, predict_request,
                       predictions_of)
from .v1 import featurizer_pb2 as pb
from .v1 import featurizer_pb2_grpc as pb_grpc

DEFAULT_TIMEOUT_S = 60.0


class FeaturizerClient:
    """Blocking client. Use it as a context manager so the channel is closed.

    >>> with FeaturizerClient("localhost:50051") as client:
    ...     X = client.embed(["cat.jpg", "photos/"], model="alexnet")   # float32 [N, 9216]

    ``target``: ``host:port``, ``dns:///host:port`` or ``ipv4:a:p,b:p`` (round-robin over all);
    None: ``$FEATURIZER_TARGET``, else ``localhost:50051`` (the same default as the CLI's).
    ``timeout``: default seconds per RPC (per chunk for big jobs); every method takes ``timeout=``.
    ``tls``/``token``: match the server's ``--tls-*`` and ``--auth-token-file`` flags.
    ``retry``: gRPC retry policy on UNAVAILABLE/RESOURCE_EXHAUSTED (None turns retries off).
    ``connect_timeout``: until the first connection, a call waits this long for the server, then
    fails with UNAVAILABLE "cannot reach featurizer at TARGET" (None: until the call's deadline).
    ``wait_for_ready``: once connected, calls wait for a lost server (a restart, a rolling deploy)
    up to their deadline; False: a call without a connection fails at once (gRPC's fail-fast).
    """

    def __init__(self, target: Optional[str] = None, *, timeout: Optional[float] = DEFAULT_TIMEOUT_S,
                 tls: Optional[Tls] = None, token: Optional[str] = None,
                 retry: Optional[RetryPolicy] = RetryPolicy(), load_balancing: str = "round_robin",
                 wait_for_ready: bool = True, connect_timeout: Optional[float] = DEFAULT_CONNECT_TIMEOUT_S,
                 channel: Optional[grpc.Channel] = None) -> None:
        self.connection = Connection(target or default_target(), tls, token, retry, load_balancing, wait_for_ready,
                                     connect_timeout)
        self.target = self.connection.target
        self.timeout = timeout
        self._channel = channel or self.connection.sync_channel()
        self._reach = Reach(self.connection)
        self._stub = pb_grpc.FeaturizerStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def __enter__(self) -> "FeaturizerClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def embed(self, images: ImageLike | Iterable[ImageLike], *, model: str, version: int = 0, layer: str = "",
              pooling: PoolingName = "", normalize: bool = False, dtype: DTypeName = "float32",
              decode: Optional[DecodeName] = None, batch_size: int = DEFAULT_BATCH_SIZE,
              max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, progress: bool = False,
              timeout: Optional[float] = None) -> np.ndarray:
        """Feature vectors ``[N, D]`` (float32 unless ``dtype="float16"``); row i belongs to image i.

        ``images``: one image or many (bytes, paths, directories, globs, uint8 HWC arrays, PIL
        images). They are sent ``batch_size`` per call with at most ``max_in_flight`` calls at once.
        ``decode``: "exact" or "fast" JPEG decoding for this call (None: the model's own
        ``input.decode``; docs/client.md says what fast changes).
        """
        options = EmbedOptions(layer, pooling, normalize, dtype)
        decode_to_proto(decode)  # a bad value is a ValueError before any image is read
        items, total = plan(images)

        def submit(batch: list[pb.Image]) -> "_Future":
            return self._future(self._stub.Embed, embed_request(model, version, batch, options, decode), timeout)

        with Progress(progress, total) as bar:
            arrays = [embeddings_of(r) for r in ordered_calls(
                submit, chunks(items, batch_size), max_in_flight, bar)]
        return concat_rows(arrays)

    def predict(self, images: ImageLike | Iterable[ImageLike], *, model: str, version: int = 0, top_k: int = 0,
                include_features: bool = False, feature_options: EmbedOptions = EmbedOptions(),
                decode: Optional[DecodeName] = None, batch_size: int = DEFAULT_BATCH_SIZE,
                max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, progress: bool = False,
                timeout: Optional[float] = None) -> list[Prediction]:
        """One ``Prediction`` per image (top ``top_k`` classes; 0 = the server's default of 5).

        ``include_features``: also return each image's backbone features (heads only), computed
        in the same backbone pass, as ``Prediction.features``. ``decode``: as in ``embed``.
        """
        features = feature_options if include_features else None
        decode_to_proto(decode)
        items, total = plan(images)

        def submit(batch: list[pb.Image]) -> "_Future":
            return self._future(self._stub.Predict, predict_request(model, version, batch, top_k, features, decode),
                                timeout)

        with Progress(progress, total) as bar:
            return [p for r in ordered_calls(submit, chunks(items, batch_size), max_in_flight, bar)
                    for p in predictions_of(r)]

    # ----- bulk jobs over the stream RPCs (bulk.py): one bad input costs one row --------------
    def iter_embed(self, images: ImageLike | Iterable[ImageLike], *, model: str, version: int = 0,
                   options: EmbedOptions = EmbedOptions(), decode: Optional[DecodeName] = None,
                   on_error: OnError | str = OnError.RAISE, max_in_flight: int = DEFAULT_BULK_IN_FLIGHT,
                   streams: int = DEFAULT_STREAMS, timeout: Optional[float] = None) -> Iterator[Union[Result, Failure]]:
        """Each input's ``Result`` (``.value``: its row, ``.source``: its path or index), in input
        order, over EmbedStream. ``on_error``: "raise" (``ItemFailure`` naming the input's global
        index and file), "skip" (leave it out) or "collect" (a ``Failure`` in its place).
        ``max_in_flight``: inputs read and not yet handed back; ``streams``: concurrent streams
        (round_robin puts them on different replicas). ``timeout``: the longest wait for an answer.
        ``decode``: as in ``embed``, for every item.
        """
        spec = embed_spec(model, version, options, decode)
        window = Window(items_of(images), max_in_flight)
        return bulk.apply_policy(bulk.run(self, spec, window, streams, timeout), on_error)

    def embed_many(self, images: ImageLike | Iterable[ImageLike], *, model: str, on_error: OnError | str = OnError.RAISE,
                   **kwargs: Any) -> Collected:
        """``iter_embed`` gathered: ``.values`` ``[N, D]``, ``.sources`` row by row, ``.failures``."""
        return bulk.collect(self.iter_embed(images, model=model, on_error=OnError(on_error), **kwargs), stack=True)

    def iter_predict(self, images: ImageLike | Iterable[ImageLike], *, model: str, version: int = 0, top_k: int = 0,
                     features: Optional[EmbedOptions] = None, decode: Optional[DecodeName] = None,
                     on_error: OnError | str = OnError.RAISE, max_in_flight: int = DEFAULT_BULK_IN_FLIGHT,
                     streams: int = DEFAULT_STREAMS, timeout: Optional[float] = None) -> Iterator[Union[Result, Failure]]:
        """Like ``iter_embed`` over PredictStream: ``Result.value`` is a ``Prediction``."""
        spec = predict_spec(model, version, top_k, features, decode)
        window = Window(items_of(images), max_in_flight)
        return bulk.apply_policy(bulk.run(self, spec, window, streams, timeout), on_error)

    def predict_many(self, images: ImageLike | Iterable[ImageLike], *, model: str,
                     on_error: OnError | str = OnError.RAISE, **kwargs: Any) -> Collected:
        """``iter_predict`` gathered: ``.values`` (Predictions), ``.sources``, ``.failures``."""
        return bulk.collect(self.iter_predict(images, model=model, on_error=OnError(on_error), **kwargs), stack=False)

    def embed_to(self, images: ImageLike | Iterable[ImageLike], out: Union[str, os.PathLike], *, model: str,
                 version: int = 0, options: EmbedOptions = EmbedOptions(), decode: Optional[DecodeName] = None,
                 on_error: OnError | str = OnError.RAISE, resume: bool = False, dedup: bool = False, progress: bool = False,
                 max_in_flight: int = DEFAULT_BULK_IN_FLIGHT, streams: int = DEFAULT_STREAMS,
                 commit_every: int = DEFAULT_COMMIT_EVERY, timeout: Optional[float] = None) -> Summary:
        """Embed every input into ``out`` (a ``.npy``), writing as answers arrive (docs/client.md).

        Beside it: ``<out>.names.txt`` (row i's source on line i), ``<out>.failures.jsonl`` and
        ``<out>.journal.json``. ``resume``: go on from what an earlier run (crashed, killed)
        committed; the files end byte for byte as an uninterrupted run writes them. ``dedup``:
        inputs with identical bytes are sent once and the row copied.
        """
        spec = embed_spec(model, version, options, decode)
        values = list(bulk.inputs_of(images))
        job = Job(OutputPaths.beside(Path(out)), values, bulk.describe("embed", model, version, options, decode),
                  Results.MATRIX, on_error=OnError(on_error), resume=resume, dedup=dedup, commit_every=commit_every)
        window = Window(job.items(), max_in_flight)
        return drive(job, lambda: bulk.run(self, spec, window, streams, timeout), window, progress)

    def predict_to(self, images: ImageLike | Iterable[ImageLike], out: Union[str, os.PathLike], *, model: str,
                   version: int = 0, top_k: int = 0, features: Optional[EmbedOptions] = None,
                   decode: Optional[DecodeName] = None, on_error: OnError | str = OnError.RAISE,
                   resume: bool = False, progress: bool = False,
                   max_in_flight: int = DEFAULT_BULK_IN_FLIGHT, streams: int = DEFAULT_STREAMS,
                   commit_every: int = DEFAULT_COMMIT_EVERY, timeout: Optional[float] = None) -> Summary:
        """Predict every input into ``out`` as JSON lines (one per good input, naming it); failures
        and journal beside it, resumable like ``embed_to``."""
        spec = predict_spec(model, version, top_k, features, decode)
        values = list(bulk.inputs_of(images))
        description = bulk.describe("predict", model, version, features, decode, top_k=top_k)
        job = Job(OutputPaths.beside(Path(out)), values, description, Results.LINES, on_error=OnError(on_error),
                  resume=resume, dedup=False, commit_every=commit_every)
        window = Window(job.items(), max_in_flight)
        return drive(job, lambda: bulk.run(self, spec, window, streams, timeout), window, progress)

    def list_models(self, *, timeout: Optional[float] = None) -> list[ModelInfo]:
        """Every model in the server's registry, sorted by name, with versions, states and aliases."""
        return models_of(self._call(self._stub.ListModels, pb.ListModelsRequest(), timeout))

    def get_model(self, model: str, *, timeout: Optional[float] = None) -> ModelInfo:
        """One model (name or alias) with its versions and their states."""
        return model_of(self._call(self._stub.GetModel, pb.GetModelRequest(model=model), timeout))

    def health(self, service: str = "", *, timeout: Optional[float] = None) -> str:
        """The gRPC health status name: SERVING or NOT_SERVING.

        ``service``: "" for the server, "featurizer.v1.Featurizer", or a model name; any other
        raises FeaturizerError NOT_FOUND naming it.
        """
        try:
            response = self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        except FeaturizerError as error:
            raise health_error(error, service) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def _call(self, method: Callable, request: Any, timeout: Optional[float]) -> Any:
        remaining = self._connected(self.timeout if timeout is None else timeout)
        try:
            return method(request, timeout=remaining, metadata=self.connection.metadata(),
                          wait_for_ready=self.connection.wait_for_ready)
        except grpc.RpcError as error:
            raise self._error(error) from None

    def _future(self, method: Any, request: Any, timeout: Optional[float]) -> "_Future":
        remaining = self._connected(self.timeout if timeout is None else timeout)
        return _Future(method.future(request, timeout=remaining, metadata=self.connection.metadata(),
                                     wait_for_ready=self.connection.wait_for_ready), self._error)

    def _connected(self, timeout: Optional[float]) -> Optional[float]:
        """Wait for a first connection if ``Reach`` says so; the call's timeout left after that."""
        if not self._reach.must_wait(connectivity(self._channel)):
            return timeout
        window = self._reach.window(timeout)
        waited = wait_until_ready(self._channel, window)
        if waited is None:
            raise self._reach.timed_out(timeout, window)
        self._reach.connected()
        return None if timeout is None else max(timeout - waited, 0.0)

    def _error(self, error: grpc.RpcError) -> FeaturizerError:
        return self._reach.failure(FeaturizerError.from_rpc_error(error), connectivity(self._channel))


class _Future:
    """A gRPC future whose failure is a FeaturizerError."""

    def __init__(self, future: grpc.Future, error: Callable[[grpc.RpcError], FeaturizerError]) -> None:
        self._future = future
        self._error = error

    def result(self) -> Any:
        try:
            return self._future.result()
        except grpc.RpcError as error:
            raise self._error(error) from None

    def cancel(self) -> None:
        self._future.cancel()
