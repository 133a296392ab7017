"""Requests and results: the typed Python side of featurizer.v1, shared by both clients."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Optional

import grpc
import numpy as np

from .errors import FeaturizerError
from .tensors import from_proto
from .v1 import featurizer_pb2 as pb

PoolingName = Literal["", "flatten", "avg", "max", "none"]
DTypeName = Literal["float32", "float16"]
DecodeName = Literal["exact", "fast"]
_POOLING = {"": pb.POOLING_DEFAULT, "flatten": pb.POOLING_FLATTEN, "avg": pb.POOLING_AVG,
            "max": pb.POOLING_MAX, "none": pb.POOLING_NONE}
_DTYPE = {"float32": pb.DTYPE_FLOAT32, "float16": pb.DTYPE_FLOAT16}
_DECODE = {"exact": pb.DECODE_EXACT, "fast": pb.DECODE_FAST}


@dataclass(frozen=True)
class EmbedOptions:
    """Which features to return: a layer at or before the model's cut, pooling, L2 rows, dtype."""

    layer: str = ""
    pooling: PoolingName = ""
    normalize: bool = False
    dtype: DTypeName = "float32"

    def to_proto(self) -> pb.EmbedOptions:
        if self.pooling not in _POOLING:
            raise ValueError(f"pooling: expected one of {', '.join(p or repr('') for p in _POOLING)}, got {self.pooling!r}")
        if self.dtype not in _DTYPE:
            raise ValueError(f"dtype: expected float32 or float16, got {self.dtype!r}")
        return pb.EmbedOptions(layer=self.layer, pooling=_POOLING[self.pooling], normalize=self.normalize,
                               output_dtype=_DTYPE[self.dtype])


def decode_to_proto(decode: Optional[DecodeName]) -> pb.Decode:
    """``decode=`` of embed/predict -> featurizer.v1's ``Decode`` (None: the model's own mode).
    Checked here so a typo is a ValueError before any image is read or sent."""
    if decode is None:
        return pb.DECODE_DEFAULT
    if decode not in _DECODE:
        raise ValueError(f"decode: expected 'exact', 'fast' or None (the model's own input.decode), got {decode!r}")
    return _DECODE[decode]


@dataclass(frozen=True)
class ClassScore:
    label: str
    index: int
    probability: float


@dataclass(frozen=True)
class Prediction:
    """One image's top classes, most probable first.

    ``positive_probability``: for binary heads (one sigmoid unit), P(labels[1]); None otherwise.
    ``features``: the backbone's feature row, when ``include_features=True`` was asked for.
    """

    classes: tuple[ClassScore, ...]
    positive_probability: Optional[float] = None
    features: Optional[np.ndarray] = None

    @property
    def label(self) -> str:
        return self.classes[0].label

    @property
    def index(self) -> int:
        return self.classes[0].index

    @property
    def probability(self) -> float:
        return self.classes[0].probability


@dataclass(frozen=True)
class ModelVersion:
    version: int
    state: str                      # LOADING | AVAILABLE | FAILED | UNLOADING
    kind: str                       # features | classifier | head
    architecture: str
    output_shape: tuple[int, ...]
    labels: tuple[str, ...]
    backbone: str
    reason: str
    sha256: str
    decode: str = ""                # the model's own JPEG decode mode: exact | fast ("" for heads)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    default_version: int            # 0 when no version is AVAILABLE
    versions: tuple[ModelVersion, ...]
    aliases: tuple[str, ...] = ()   # aliases that lead to this model (list_models and get_model)


def embed_request(model: str, version: int, images: Sequence[pb.Image], options: EmbedOptions,
                  decode: Optional[DecodeName] = None) -> pb.EmbedRequest:
    return pb.EmbedRequest(model=model, version=version, images=images, options=options.to_proto(),
                           decode=decode_to_proto(decode))


def predict_request(model: str, version: int, images: Sequence[pb.Image], top_k: int,
                    features: Optional[EmbedOptions], decode: Optional[DecodeName] = None) -> pb.PredictRequest:
    request = pb.PredictRequest(model=model, version=version, images=images, top_k=top_k,
                                decode=decode_to_proto(decode))
    if features is not None:
        request.include_features = True
        request.feature_options.CopyFrom(features.to_proto())
    return request


def embeddings_of(response: pb.EmbedResponse) -> np.ndarray:
    return from_proto(response.embeddings)


def predictions_of(response: pb.PredictResponse) -> list[Prediction]:
    features = from_proto(response.features) if response.HasField("features") else None
    out = []
    for i, p in enumerate(response.predictions):
        classes = tuple(ClassScore(c.label, c.index, c.probability) for c in p.classes)
        # An optional field: a sigmoid that rounds to exactly 0.0 (logit below about -104) is
        # still a binary head's answer, and only absence means "not a binary model".
        positive = p.positive_probability if p.HasField("positive_probability") else None
        out.append(Prediction(classes, positive, None if features is None else features[i]))
    return out


def health_error(error: FeaturizerError, service: str) -> FeaturizerError:
    """gRPC's health service answers an unknown service with a bare NOT_FOUND: name it."""
    if error.code is not grpc.StatusCode.NOT_FOUND or error.details:
        return error
    return FeaturizerError(error.code, f"health: unknown service {service!r}; the server reports on '' (itself), "
                                       f"featurizer.v1.Featurizer and each model by name")


def models_of(response: pb.ListModelsResponse) -> list[ModelInfo]:
    return [model_of(info, _aliases_for(info.name, response.aliases)) for info in response.models]


def model_of(info: pb.ModelInfo, aliases: tuple[str, ...] = ()) -> ModelInfo:
    """``aliases``: from ListModels' map, for servers older than ModelInfo.aliases."""
    versions = tuple(ModelVersion(
        version=v.version, state=pb.ModelState.Name(v.state).removeprefix("MODEL_STATE_"), kind=v.kind,
        architecture=v.architecture, output_shape=tuple(v.output_shape), labels=tuple(v.labels),
        backbone=v.backbone, reason=v.reason, sha256=v.sha256, decode=v.input.decode) for v in info.versions)
    return ModelInfo(info.name, info.default_version, versions, tuple(info.aliases) or aliases)


def _aliases_for(name: str, aliases: dict[str, str]) -> tuple[str, ...]:
    return tuple(sorted(a for a, target in aliases.items() if target.split("@")[0] == name))
