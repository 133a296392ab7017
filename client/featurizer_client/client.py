"""``FeaturizerClient``: the blocking SDK, one object owning one channel and its stubs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Callable, Optional

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .channel import Connection, RetryPolicy, Tls
from .chunking import DEFAULT_BATCH_SIZE, DEFAULT_MAX_IN_FLIGHT, Progress, chunks, concat_rows, ordered_calls, plan
from .errors import FeaturizerError
from .inputs import ImageLike
from .messages import (DTypeName, EmbedOptions, ModelInfo, PoolingName, Prediction, embed_request,
                       embeddings_of, model_of, models_of, predict_request, predictions_of)
from .v1 import featurizer_pb2 as pb
from .v1 import featurizer_pb2_grpc as pb_grpc

DEFAULT_TIMEOUT_S = 60.0


class FeaturizerClient:
    """Blocking client. Use it as a context manager so the channel is closed.

    >>> with FeaturizerClient("localhost:50051") as client:
    ...     X = client.embed(["cat.jpg", "photos/"], model="alexnet")   # float32 [N, 9216]

    ``target``: ``host:port``, ``dns:///host:port`` or ``ipv4:a:p,b:p`` (round-robin over all).
    ``timeout``: default seconds per RPC (per chunk for big jobs); every method takes ``timeout=``.
    ``tls``/``token``: match the server's ``--tls-*`` and ``--auth-token-file`` flags.
    ``retry``: gRPC retry policy on UNAVAILABLE/RESOURCE_EXHAUSTED (None turns retries off).
    ``wait_for_ready``: calls wait for an unreachable server (until their deadline) instead of failing.
    """

    def __init__(self, target: str, *, timeout: Optional[float] = DEFAULT_TIMEOUT_S, tls: Optional[Tls] = None,
                 token: Optional[str] = None, retry: Optional[RetryPolicy] = RetryPolicy(),
                 load_balancing: str = "round_robin", wait_for_ready: bool = True,
                 channel: Optional[grpc.Channel] = None) -> None:
        self.connection = Connection(target, tls, token, retry, load_balancing, wait_for_ready)
        self.target = target
        self.timeout = timeout
        self._channel = channel or self.connection.sync_channel()
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
              batch_size: int = DEFAULT_BATCH_SIZE, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
              progress: bool = False, timeout: Optional[float] = None) -> np.ndarray:
        """Feature vectors ``[N, D]`` (float32 unless ``dtype="float16"``); row i belongs to image i.

        ``images``: one image or many (bytes, paths, directories, globs, uint8 HWC arrays, PIL
        images). They are sent ``batch_size`` per call with at most ``max_in_flight`` calls at once.
        """
        options = EmbedOptions(layer, pooling, normalize, dtype)
        items, total = plan(images)

        def submit(batch: list[pb.Image]) -> "_Future":
            return self._future(self._stub.Embed, embed_request(model, version, batch, options), timeout)

        with Progress(progress, total) as bar:
            arrays = [embeddings_of(r) for r in ordered_calls(
                submit, chunks(items, batch_size), max_in_flight, bar)]
        return concat_rows(arrays)

    def predict(self, images: ImageLike | Iterable[ImageLike], *, model: str, version: int = 0, top_k: int = 0,
                include_features: bool = False, feature_options: EmbedOptions = EmbedOptions(),
                batch_size: int = DEFAULT_BATCH_SIZE, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                progress: bool = False, timeout: Optional[float] = None) -> list[Prediction]:
        """One ``Prediction`` per image (top ``top_k`` classes; 0 = the server's default of 5).

        ``include_features``: also return each image's backbone features (heads only), computed
        in the same backbone pass, as ``Prediction.features``.
        """
        features = feature_options if include_features else None
        items, total = plan(images)

        def submit(batch: list[pb.Image]) -> "_Future":
            return self._future(self._stub.Predict, predict_request(model, version, batch, top_k, features), timeout)

        with Progress(progress, total) as bar:
            return [p for r in ordered_calls(submit, chunks(items, batch_size), max_in_flight, bar)
                    for p in predictions_of(r)]

    def list_models(self, *, timeout: Optional[float] = None) -> list[ModelInfo]:
        """Every model in the server's registry, sorted by name, with versions, states and aliases."""
        return models_of(self._call(self._stub.ListModels, pb.ListModelsRequest(), timeout))

    def get_model(self, model: str, *, timeout: Optional[float] = None) -> ModelInfo:
        """One model (name or alias) with its versions and their states."""
        return model_of(self._call(self._stub.GetModel, pb.GetModelRequest(model=model), timeout))

    def health(self, service: str = "", *, timeout: Optional[float] = None) -> str:
        """The gRPC health status name: SERVING, NOT_SERVING or SERVICE_UNKNOWN.

        ``service``: "" for the server, "featurizer.v1.Featurizer", or a model name.
        """
        response = self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def _call(self, method: Callable, request: Any, timeout: Optional[float]) -> Any:
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout,
                          metadata=self.connection.metadata(), wait_for_ready=self.connection.wait_for_ready)
        except grpc.RpcError as error:
            raise FeaturizerError.from_rpc_error(error) from None

    def _future(self, method: Any, request: Any, timeout: Optional[float]) -> "_Future":
        return _Future(method.future(request, timeout=self.timeout if timeout is None else timeout,
                                     metadata=self.connection.metadata(),
                                     wait_for_ready=self.connection.wait_for_ready))


class _Future:
    """A gRPC future whose failure is a FeaturizerError."""

    def __init__(self, future: grpc.Future) -> None:
        self._future = future

    def result(self) -> Any:
        try:
            return self._future.result()
        except grpc.RpcError as error:
            raise FeaturizerError.from_rpc_error(error) from None

    def cancel(self) -> None:
        self._future.cancel()
