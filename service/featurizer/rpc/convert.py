"""Protobuf <-> engine types. The only module besides the servicer that knows featurizer.v1."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Optional

import numpy as np
from featurizer_client.tensors import TensorFormatError, from_proto, to_proto
from featurizer_client.v1 import featurizer_pb2 as pb

from featurizer.architectures import Pooling
from featurizer.inference.engine import Embeddings, Predictions, RawImage
from featurizer.inference.errors import InvalidArgument
from featurizer.inference.models import ModelVersion
from featurizer.inference.requests import EmbedOptions, OutputDType
from featurizer.registry.manifest import DecodeMode
from featurizer.registry.registry import RegistryError, alias_chain
from featurizer.states import ModelState

# featurizer.v1's POOLING_<NAME> for each Pooling member (a member missing from the .proto fails
# here, at import); POOLING_DEFAULT = "" = the model's own pooling.
_POOLING: dict[int, str] = {pb.POOLING_DEFAULT: "", **{pb.Pooling.Value(f"POOLING_{p.name}"): p for p in Pooling}}
_OUT_DTYPE = {pb.DTYPE_UNSPECIFIED: OutputDType.FLOAT32, pb.DTYPE_FLOAT32: OutputDType.FLOAT32,
              pb.DTYPE_FLOAT16: OutputDType.FLOAT16}
# featurizer.v1's DECODE_<NAME> for each DecodeMode member (a member missing from the .proto fails
# here, at import); DECODE_DEFAULT = None = the model's own `input.decode`.
_DECODE: dict[int, Optional[DecodeMode]] = {pb.DECODE_DEFAULT: None,
                                            **{pb.Decode.Value(f"DECODE_{m.name}"): m for m in DecodeMode}}
_STATE = {ModelState.LOADING: pb.MODEL_STATE_LOADING, ModelState.AVAILABLE: pb.MODEL_STATE_AVAILABLE,
          ModelState.FAILED: pb.MODEL_STATE_FAILED, ModelState.UNLOADING: pb.MODEL_STATE_UNLOADING}


def images_from_proto(images) -> list[RawImage]:
    out: list[RawImage] = []
    for i, image in enumerate(images):
        source = image.WhichOneof("source")
        if source == "encoded":
            out.append(image.encoded)
        elif source == "tensor":
            try:
                array = from_proto(image.tensor)
            except TensorFormatError as error:
                raise InvalidArgument(f"images[{i}].tensor: {error}") from None
            if array.dtype == np.float16:
                raise InvalidArgument(f"images[{i}].tensor.dtype: must be DTYPE_UINT8 (HWC RGB) or DTYPE_FLOAT32 (CHW), "
                                      f"got DTYPE_FLOAT16")
            out.append(array)
        else:
            raise InvalidArgument(f"images[{i}]: empty; set `encoded` (file bytes) or `tensor`")
    return out


def options_from_proto(options: pb.EmbedOptions, field: str = "options") -> EmbedOptions:
    if options.pooling not in _POOLING:
        raise InvalidArgument(f"{field}.pooling: unknown value {options.pooling}")
    if options.output_dtype not in _OUT_DTYPE:
        name = pb.DType.Name(options.output_dtype) if options.output_dtype in pb.DType.values() else options.output_dtype
        raise InvalidArgument(f"{field}.output_dtype: must be DTYPE_FLOAT32 or DTYPE_FLOAT16, got {name}")
    return EmbedOptions(layer=options.layer, pooling=_POOLING[options.pooling], normalize=options.normalize,
                        dtype=_OUT_DTYPE[options.output_dtype])


def decode_from_proto(decode: int) -> Optional[DecodeMode]:
    """A request's ``decode`` field -> the engine's override (None: the model's own mode). proto3
    keeps an enum number it does not know, so a raw 7 arrives here and is refused by name."""
    if decode not in _DECODE:
        raise InvalidArgument(f"decode: unknown value {decode}; expected DECODE_DEFAULT (the model's own), "
                              f"{', '.join(f'DECODE_{m.name}' for m in DecodeMode)}")
    return _DECODE[decode]


def embed_response(result: Embeddings) -> pb.EmbedResponse:
    return pb.EmbedResponse(model=result.model, version=result.version, embeddings=to_proto(result.array))


def predict_response(result: Predictions) -> pb.PredictResponse:
    response = pb.PredictResponse(model=result.model, version=result.version)
    for i, scores in enumerate(result.top):
        prediction = response.predictions.add()
        if result.positive:  # binary heads only: set even when it is 0.0 (presence is the signal)
            prediction.positive_probability = result.positive[i]
        for s in scores:
            prediction.classes.add(index=s.index, label=s.label, probability=s.probability)
    if result.features is not None:
        response.features.CopyFrom(to_proto(result.features.array))
        response.backbone = result.features.model
        response.backbone_version = result.features.version
    return response


def version_info(mv: ModelVersion) -> pb.ModelVersionInfo:
    info = pb.ModelVersionInfo(version=mv.version, state=_STATE[mv.state], reason=mv.reason,
                               output_shape=list(mv.output_shape))
    m = mv.manifest
    if m is not None:
        info.kind, info.architecture, info.sha256 = m.kind, m.architecture, m.weights.sha256
        info.labels.extend(m.output.labels)
        if m.backbone is not None:
            info.backbone, info.backbone_version = m.backbone.model, m.backbone.version
        else:
            spec = m.input
            info.input.CopyFrom(pb.InputSpec(mode=spec.mode, resize=spec.resize or 0, height=spec.height or 0,
                                             width=spec.width or 0, mean=list(spec.mean), std=list(spec.std),
                                             decode=spec.decode))
    return info


def model_infos(versions: Iterable[ModelVersion], aliases: Mapping[str, str]) -> list[pb.ModelInfo]:
    """One ModelInfo per model, sorted by name, with the aliases that lead to it (chains followed,
    as routing does), so GetModel shows them as ListModels does."""
    infos: dict[str, pb.ModelInfo] = {}
    for mv in versions:
        info = infos.setdefault(mv.name, pb.ModelInfo(name=mv.name))
        info.versions.append(version_info(mv))
        if mv.state is ModelState.AVAILABLE:
            info.default_version = max(info.default_version, mv.version)
    for alias in sorted(aliases):
        try:
            target = infos.get(alias_chain(aliases, alias)[0])
        except RegistryError:  # a cycle routes nowhere (calls get FAILED_PRECONDITION)
            continue
        if target is not None:
            target.aliases.append(alias)
    return [infos[name] for name in sorted(infos)]
