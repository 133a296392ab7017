"""``inference.GRPCInferenceService``: the Open Inference Protocol over gRPC, beside featurizer.v1
on the same server, port, engine and auth.

Its calls go through the same interceptors as featurizer.v1's (token check, request ids,
metrics and access log with ``protocol="v2-grpc"``, error mapping through the one table in
``rpc/status.py``, safe request decoding), so the servicer only raises domain errors.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from featurizer_client.v2 import grpc_predict_v2_pb2 as pb
from featurizer_client.v2 import grpc_predict_v2_pb2_grpc as pb_grpc

from featurizer import __version__
from featurizer.inference.engine import Engine
from featurizer.inference.errors import FeaturizerError, InvalidArgument, NotFound
from featurizer.inference.models import ModelManager
from featurizer.rpc.servicer import deadline_of
from featurizer.rpc.oip import tensors
from featurizer.rpc.oip.infer import infer
from featurizer.rpc.oip.metadata import EXTENSIONS, SERVER_NAME, parse_version, signature

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
RAW_OUTPUT = "raw_output"  # request parameter: answer in raw_output_contents even for typed inputs


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, engine: Engine, manager: ModelManager, ready: Callable[[], Awaitable[bool]]) -> None:
        self.engine = engine
        self.manager = manager
        self.ready = ready

    async def ServerLive(self, request: pb.ServerLiveRequest, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=await self.ready())

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)

    async def ModelReady(self, request: pb.ModelReadyRequest, context) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=model_ready(self.manager, request.name, request.version))

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context) -> pb.ModelMetadataResponse:
        mv = self.manager.resolve(request.name, parse_version(request.version))
        sig = signature(self.manager, mv)
        response = pb.ModelMetadataResponse(name=sig.name, versions=sig.versions, platform=sig.platform)
        for specs, field in ((sig.inputs, response.inputs), (sig.outputs, response.outputs)):
            for spec in specs:
                field.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        return response

    async def ModelInfer(self, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        parameters = parameters_of(request.parameters, "parameters")
        raw = parameters.pop(RAW_OUTPUT, False) is True or bool(request.raw_input_contents)
        result = await infer(self.engine, self.manager, request.model_name, parse_version(request.model_version),
                             inputs_of(request), parameters, [o.name for o in request.outputs],
                             deadline_of(context))
        response = pb.ModelInferResponse(model_name=result.model, model_version=str(result.version), id=request.id)
        for tensor in result.outputs:
            out = response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
            if raw:
                response.raw_output_contents.append(tensors.to_raw(tensor.data))
            elif isinstance(tensor.data, list):  # BYTES
                out.contents.bytes_contents.extend(tensor.data)
            else:
                getattr(out.contents, tensors.CONTENTS_FIELD[tensor.datatype]).extend(tensor.data.reshape(-1).tolist())
        return response


def model_ready(manager: ModelManager, name: str, version: str) -> bool:
    """A version that resolves can serve; one that exists but cannot (loading, failed, unloading)
    is not ready. An unknown model or version is NOT_FOUND, as for every other call."""
    number = parse_version(version)  # a malformed version is the caller's error, not "not ready"
    try:
        manager.resolve(name, number)
    except NotFound:
        raise
    except FeaturizerError:
        return False
    return True


def inputs_of(request: pb.ModelInferRequest) -> list[tensors.Tensor]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(f"raw_input_contents: {len(raw)} entries for {len(request.inputs)} inputs; "
                              f"send one per input, or none")
    out = []
    for i, tensor in enumerate(request.inputs):
        where = f"inputs[{i}] {tensor.name[:100]!r}"
        if raw:
            if tensor.HasField("contents"):
                raise InvalidArgument(f"{where}: both contents and raw_input_contents; send one")
            out.append(tensors.from_raw(tensor.name, tensor.datatype, tensor.shape, raw[i], where))
        else:
            out.append(tensors.from_contents(tensor.name, tensor.datatype, tensor.shape, tensor.contents, where))
    return out


def parameters_of(parameters: Any, where: str) -> dict[str, Any]:
    """A map of ``InferParameter`` -> plain Python values."""
    out = {}
    for name, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is None:
            raise InvalidArgument(f"{where} {name[:40]!r}: no value set")
        out[name] = getattr(parameter, choice)
    return out


def add_to_server(server: grpc.aio.Server, engine: Engine, manager: ModelManager,
                  ready: Callable[[], Awaitable[bool]]) -> str:
    """Register the v2 service on ``server``; returns its full name (for reflection and health)."""
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(engine, manager, ready), server)
    return SERVICE_NAME
