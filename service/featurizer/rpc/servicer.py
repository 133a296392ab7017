"""The featurizer.v1 servicer: proto in -> Engine call -> proto out. Nothing else.

Errors are raised as domain errors and mapped to statuses by ``error_mapping.py``; inside
streams each item's error becomes an ``ItemError`` (same table: ``status.py``) and the stream goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Optional

import grpc
from featurizer_client.v1 import featurizer_pb2 as pb
from featurizer_client.v1 import featurizer_pb2_grpc as pb_grpc

from featurizer.rpc import convert
from featurizer.inference.engine import Engine
from featurizer.inference.errors import NotFound
from featurizer.inference.models import ModelManager
from featurizer.rpc.status import grpc_status

log = logging.getLogger(__name__)
STREAM_WINDOW = 16  # stream items processed concurrently (answers still leave in order)


def deadline_of(context: grpc.aio.ServicerContext) -> Optional[float]:
    """The caller's deadline on the event loop's clock, or None."""
    remaining = context.time_remaining()
    return None if remaining is None else asyncio.get_running_loop().time() + remaining


class FeaturizerServicer(pb_grpc.FeaturizerServicer):
    def __init__(self, engine: Engine, manager: ModelManager) -> None:
        self.engine = engine
        self.manager = manager

    async def Embed(self, request: pb.EmbedRequest, context) -> pb.EmbedResponse:
        return await self._embed(request, deadline_of(context))

    async def Predict(self, request: pb.PredictRequest, context) -> pb.PredictResponse:
        return await self._predict(request, deadline_of(context))

    async def EmbedStream(self, requests, context) -> AsyncIterator[pb.EmbedStreamResponse]:
        async for item_id, result, error in _ordered(requests, self._embed, deadline_of(context)):
            yield pb.EmbedStreamResponse(id=item_id, response=result) if error is None else \
                pb.EmbedStreamResponse(id=item_id, error=error)

    async def PredictStream(self, requests, context) -> AsyncIterator[pb.PredictStreamResponse]:
        async for item_id, result, error in _ordered(requests, self._predict, deadline_of(context)):
            yield pb.PredictStreamResponse(id=item_id, response=result) if error is None else \
                pb.PredictStreamResponse(id=item_id, error=error)

    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        aliases = self.manager.aliases
        return pb.ListModelsResponse(models=convert.model_infos(self.manager.all_versions(), aliases), aliases=aliases)

    async def GetModel(self, request: pb.GetModelRequest, context) -> pb.ModelInfo:
        name, _ = self.manager.resolve_alias(request.model)  # an alias cycle is an error, not a loop
        infos = convert.model_infos([mv for mv in self.manager.all_versions() if mv.name == name],
                                    self.manager.aliases)
        if not infos:
            raise NotFound(f"model {request.model[:100]!r} not found; known models: "
                           f"{', '.join(self.manager.model_names()) or 'none'}")
        return infos[0]

    async def _embed(self, request: pb.EmbedRequest, deadline: Optional[float]) -> pb.EmbedResponse:
        result = await self.engine.embed(
            request.model, request.version, convert.images_from_proto(request.images),
            convert.options_from_proto(request.options), deadline, decode=convert.decode_from_proto(request.decode))
        return convert.embed_response(result)

    async def _predict(self, request: pb.PredictRequest, deadline: Optional[float]) -> pb.PredictResponse:
        features = (convert.options_from_proto(request.feature_options, "feature_options")
                    if request.include_features else None)
        result = await self.engine.predict(
            request.model, request.version, convert.images_from_proto(request.images), request.top_k,
            features, deadline, decode=convert.decode_from_proto(request.decode))
        return convert.predict_response(result)


async def _ordered(requests: AsyncIterator, handle: Callable[..., Awaitable], deadline: Optional[float]):
    """Run stream items concurrently (at most STREAM_WINDOW at once), yield answers in order."""
    window: asyncio.Queue = asyncio.Queue(maxsize=STREAM_WINDOW)

    async def produce():
        try:
            async for message in requests:
                await window.put(asyncio.ensure_future(_one(message, handle, deadline)))
        except Exception:  # reading requests failed: answer what was read, then end with this error
            await window.put(None)
            raise
        await window.put(None)

    producer = asyncio.ensure_future(produce())
    try:
        while True:
            task = await window.get()
            if task is None:
                break
            yield await task
        await producer
    finally:
        producer.cancel()
        # A caller who left also makes reading its requests fail; that is its departure (the
        # interceptor reports it), so the error is retrieved here rather than logged by asyncio
        # as "Task exception was never retrieved".
        producer.add_done_callback(_retrieve)
        while not window.empty():
            task = window.get_nowait()
            if task is not None:
                task.cancel()


async def _one(message, handle: Callable[..., Awaitable], deadline: Optional[float]):
    """One stream item: (id, result, None), or (id, None, its ItemError): one bad item must not end
    the stream."""
    try:
        return message.id, await handle(message.request, deadline), None
    except Exception as error:
        code, text = grpc_status(error)
        if code is grpc.StatusCode.INTERNAL:
            log.exception("stream item %r failed", message.id)
        return message.id, None, pb.ItemError(code=code.value[0], code_name=code.name, message=text)


def _retrieve(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()
