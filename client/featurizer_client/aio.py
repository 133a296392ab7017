"""``AsyncFeaturizerClient``: the asyncio SDK (grpc.aio), same methods and results as the sync one."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, Callable, Optional, Union

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .channel import DEFAULT_CONNECT_TIMEOUT_S, Connection, Reach, RetryPolicy, Tls, default_target
from .chunking import DEFAULT_BATCH_SIZE, DEFAULT_MAX_IN_FLIGHT, Progress, chunks, concat_rows, ordered_calls_async, plan
from .client import DEFAULT_TIMEOUT_S
from . import aio_bulk, bulk
from .bulk import Collected, embed_spec, predict_spec
from .errors import FeaturizerError
from .jobs import DEFAULT_COMMIT_EVERY, Job, Results, Summary, drive_async
from .outputs import OutputPaths
from .sources import items_of
from .window import DEFAULT_BULK_IN_FLIGHT, DEFAULT_STREAMS, Failure, OnError, Result, Window
from .inputs import ImageLike
from .messages import (DecodeName, DTypeName, EmbedOptions, ModelInfo, PoolingName, Prediction, embed_request,
                       decode_to_proto, embeddings_of, health_error, model_of, models_of, predict_request,
                       predictions_of)
from .v1 import featurizer_pb2 as pb
from .v1 import featurizer_pb2_grpc as pb_grpc


class AsyncFeaturizerClient:
    """asyncio client; ``async with AsyncFeaturizerClient(target) as client: await client.embed(...)``.

    Takes the same arguments as ``FeaturizerClient``. Create it inside the running event loop.
    """

    def __init__(self, target: Optional[str] = None, *, timeout: Optional[float] = DEFAULT_TIMEOUT_S,
                 tls: Optional[Tls] = None, token: Optional[str] = None,
                 retry: Optional[RetryPolicy] = RetryPolicy(), load_balancing: str = "round_robin",
                 wait_for_ready: bool = True, connect_timeout: Optional[float] = DEFAULT_CONNECT_TIMEOUT_S,
                 channel: Optional[grpc.aio.Channel] = None) -> None:
        self.connection = Connection(target or default_target(), tls, token, retry, load_balancing, wait_for_ready,
                                     connect_timeout)
        self.target = self.connection.target
        self.timeout = timeout
        self._channel = channel or self.connection.aio_channel()
        self._reach = Reach(self.connection)
        self._stub = pb_grpc.FeaturizerStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def __aenter__(self) -> "AsyncFeaturizerClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def embed(self, images: ImageLike | Iterable[ImageLike], *, model: str, version: int = 0, layer: str = "",
                    pooling: PoolingName = "", normalize: bool = False, dtype: DTypeName = "float32",
                    decode: Optional[DecodeName] = None, batch_size: int = DEFAULT_BATCH_SIZE,
                    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, progress: bool = False,
                    timeout: Optional[float] = None) -> np.ndarray:
        """Feature vectors ``[N, D]``; see ``FeaturizerClient.embed``."""
        options = EmbedOptions(layer, pooling, normalize, dtype)
        decode_to_proto(decode)  # a bad value is a ValueError before any image is read
        items, total = plan(images)

        async def submit(batch: list[pb.Image]) -> pb.EmbedResponse:
            return await self._call(self._stub.Embed, embed_request(model, version, batch, options, decode), timeout)

        with Progress(progress, total) as bar:
            arrays = [embeddings_of(r) async for r in ordered_calls_async(
                submit, chunks(items, batch_size), max_in_flight, bar)]
        return concat_rows(arrays)

    async def predict(self, images: ImageLike | Iterable[ImageLike], *, model: str, version: int = 0,
                      top_k: int = 0, include_features: bool = False, feature_options: EmbedOptions = EmbedOptions(),
                      decode: Optional[DecodeName] = None, batch_size: int = DEFAULT_BATCH_SIZE,
                      max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, progress: bool = False,
                      timeout: Optional[float] = None) -> list[Prediction]:
        """One ``Prediction`` per image; see ``FeaturizerClient.predict``."""
        features = feature_options if include_features else None
        decode_to_proto(decode)
        items, total = plan(images)

        async def submit(batch: list[pb.Image]) -> pb.PredictResponse:
            return await self._call(self._stub.Predict, predict_request(model, version, batch, top_k, features, decode),
                                    timeout)

        with Progress(progress, total) as bar:
            return [p async for r in ordered_calls_async(submit, chunks(items, batch_size), max_in_flight, bar)
                    for p in predictions_of(r)]

    # ----- bulk jobs over the stream RPCs: see FeaturizerClient.iter_embed and embed_to ---------
    def iter_embed(self, images: ImageLike | Iterable[ImageLike], *, model: str, version: int = 0,
                   options: EmbedOptions = EmbedOptions(), decode: Optional[DecodeName] = None,
                   on_error: OnError | str = OnError.RAISE, max_in_flight: int = DEFAULT_BULK_IN_FLIGHT,
                   streams: int = DEFAULT_STREAMS,
                   timeout: Optional[float] = None) -> AsyncIterator[Union[Result, Failure]]:
        """``async for result in client.iter_embed(...)``; see ``FeaturizerClient.iter_embed``."""
        spec = embed_spec(model, version, options, decode)
        window = Window(items_of(images), max_in_flight)
        return aio_bulk.apply_policy(aio_bulk.run(self, spec, window, streams, timeout), on_error)

    async def embed_many(self, images: ImageLike | Iterable[ImageLike], *, model: str,
                         on_error: OnError | str = OnError.RAISE, **kwargs: Any) -> Collected:
        return bulk.collect([o async for o in self.iter_embed(images, model=model, on_error=OnError(on_error), **kwargs)],
                            stack=True)

    def iter_predict(self, images: ImageLike | Iterable[ImageLike], *, model: str, version: int = 0, top_k: int = 0,
                     features: Optional[EmbedOptions] = None, decode: Optional[DecodeName] = None,
                     on_error: OnError | str = OnError.RAISE, max_in_flight: int = DEFAULT_BULK_IN_FLIGHT,
                     streams: int = DEFAULT_STREAMS,
                     timeout: Optional[float] = None) -> AsyncIterator[Union[Result, Failure]]:
        spec = predict_spec(model, version, top_k, features, decode)
        window = Window(items_of(images), max_in_flight)
        return aio_bulk.apply_policy(aio_bulk.run(self, spec, window, streams, timeout), on_error)

    async def predict_many(self, images: ImageLike | Iterable[ImageLike], *, model: str,
                           on_error: OnError | str = OnError.RAISE, **kwargs: Any) -> Collected:
        return bulk.collect([o async for o in self.iter_predict(images, model=model, on_error=OnError(on_error), **kwargs)],
                            stack=False)

    async def embed_to(self, images: ImageLike | Iterable[ImageLike], out: Union[str, os.PathLike], *, model: str,
                       version: int = 0, options: EmbedOptions = EmbedOptions(), decode: Optional[DecodeName] = None,
                       on_error: OnError | str = OnError.RAISE, resume: bool = False, dedup: bool = False,
                       progress: bool = False, max_in_flight: int = DEFAULT_BULK_IN_FLIGHT,
                       streams: int = DEFAULT_STREAMS, commit_every: int = DEFAULT_COMMIT_EVERY,
                       timeout: Optional[float] = None) -> Summary:
        """See ``FeaturizerClient.embed_to``: the same files, byte for byte."""
        spec = embed_spec(model, version, options, decode)
        values = list(bulk.inputs_of(images))
        job = Job(OutputPaths.beside(Path(out)), values, bulk.describe("embed", model, version, options, decode),
                  Results.MATRIX, on_error=OnError(on_error), resume=resume, dedup=dedup, commit_every=commit_every)
        window = Window(job.items(), max_in_flight)
        return await drive_async(job, lambda: aio_bulk.run(self, spec, window, streams, timeout), window, progress)

    async def list_models(self, *, timeout: Optional[float] = None) -> list[ModelInfo]:
        return models_of(await self._call(self._stub.ListModels, pb.ListModelsRequest(), timeout))

    async def get_model(self, model: str, *, timeout: Optional[float] = None) -> ModelInfo:
        return model_of(await self._call(self._stub.GetModel, pb.GetModelRequest(model=model), timeout))

    async def health(self, service: str = "", *, timeout: Optional[float] = None) -> str:
        """SERVING or NOT_SERVING; see ``FeaturizerClient.health``."""
        try:
            response = await self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        except FeaturizerError as error:
            raise health_error(error, service) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    async def _call(self, method: Callable, request: Any, timeout: Optional[float]) -> Any:
        remaining = await self._connected(self.timeout if timeout is None else timeout)
        try:
            return await method(request, timeout=remaining, metadata=self.connection.metadata(),
                                wait_for_ready=self.connection.wait_for_ready)
        except grpc.RpcError as error:
            raise self._reach.failure(FeaturizerError.from_rpc_error(error), self._channel.get_state()) from None

    async def _connected(self, timeout: Optional[float]) -> Optional[float]:
        """Wait for a first connection if ``Reach`` says so; see ``FeaturizerClient._connected``."""
        if not self._reach.must_wait(self._channel.get_state()):
            return timeout
        window = self._reach.window(timeout)
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            await asyncio.wait_for(self._channel.channel_ready(), window)  # channel_ready() also dials
        except asyncio.TimeoutError:
            raise self._reach.timed_out(timeout, window) from None
        self._reach.connected()
        return None if timeout is None else max(timeout - (loop.time() - start), 0.0)
