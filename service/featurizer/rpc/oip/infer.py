"""One v2 inference, whatever the transport: decoded input tensors and parameters in, output
tensors out, through the same ``Engine.embed`` / ``Engine.predict`` that featurizer.v1 calls
(same registry, batcher, limits and metrics).

Request parameters carry featurizer's options: ``layer`` (string), ``pooling`` (string:
flatten, avg, max, none), ``normalize`` (bool) for features models; ``top_k`` (int, 0 = 5 or the
number of classes) for classifiers and heads; ``decode`` (string: exact, fast; absent = the
model's own ``input.decode``) for every model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from featurizer.architectures import Pooling
from featurizer.inference.engine import DEFAULT_TOP_K, Engine
from featurizer.inference.errors import InvalidArgument
from featurizer.inference.models import ModelManager, ModelVersion
from featurizer.inference.preparation import RawImage
from featurizer.inference.requests import EmbedOptions
from featurizer.registry.manifest import DecodeMode
from featurizer.rpc.oip.metadata import EMBEDDINGS, IMAGES, LABELS, PIXELS, PROBABILITIES, TENSOR, Signature, is_classifier, signature
from featurizer.rpc.oip.tensors import Tensor

EMBED_PARAMETERS = ("layer", "pooling", "normalize")


@dataclass(frozen=True)
class Result:
    model: str
    version: int
    outputs: list[Tensor]


async def infer(engine: Engine, manager: ModelManager, model: str, version: int, inputs: Sequence[Tensor],
                parameters: Mapping[str, Any], requested: Sequence[str],
                deadline: Optional[float] = None) -> Result:
    """Resolve the model, turn the one input tensor into images, run the engine, shape outputs.
    ``requested``: output names asked for, in order (empty: every output)."""
    mv = manager.resolve(model, version)
    sig = signature(manager, mv)
    wanted = [sig.output(name).name for name in requested] or [s.name for s in sig.outputs]
    images = images_from(inputs, sig, mv)
    decode = decode_mode(parameters)
    if is_classifier(mv):
        given = [name for name in EMBED_PARAMETERS if name in parameters]
        if given:
            raise InvalidArgument(f"parameters {', '.join(given)}: apply to features models; "
                                  f"{mv.name} is a {mv.loaded_manifest.kind}")
        classes = len(mv.loaded_manifest.output.labels)
        k = _top_k(parameters, classes)
        # Every class scored (to fill `probabilities`); `labels` keeps the top k.
        result = await engine.predict(mv.name, mv.version, images, classes, None, deadline, decode=decode)
        probabilities = np.zeros((len(result.top), classes), dtype=np.float32)
        for row, scores in zip(probabilities, result.top, strict=True):
            for s in scores:
                row[s.index] = s.probability
        labels = [s.label.encode() for scores in result.top for s in scores[:k]]
        produced = {PROBABILITIES: Tensor(PROBABILITIES, "FP32", probabilities.shape, probabilities),
                    LABELS: Tensor(LABELS, "BYTES", (len(result.top), k), labels)}
    else:
        if "top_k" in parameters:
            raise InvalidArgument(f"parameters top_k: applies to classifiers and heads; {mv.name} is a features model")
        embedded = await engine.embed(mv.name, mv.version, images, embed_options(parameters), deadline,
                                      decode=decode)
        array = embedded.array.astype(np.float32, copy=False)
        produced = {EMBEDDINGS: Tensor(EMBEDDINGS, "FP32", array.shape, array)}
        return Result(embedded.model, embedded.version, [produced[name] for name in wanted])
    return Result(result.model, result.version, [produced[name] for name in wanted])


def images_from(inputs: Sequence[Tensor], sig: Signature, mv: ModelVersion) -> list[RawImage]:
    """The request's one input tensor -> one image per row, as the engine takes them."""
    if len(inputs) != 1:
        raise InvalidArgument(f"inputs: model {sig.name} takes exactly one input ({', '.join(repr(s.name) for s in sig.inputs)}), "
                              f"got {len(inputs)}")
    tensor = inputs[0]
    spec = sig.input(tensor.name)
    where = f"input {tensor.name!r}"
    if tensor.datatype != spec.datatype:
        raise InvalidArgument(f"{where}: datatype must be {spec.datatype}, got {tensor.datatype}")
    shape = tensor.shape
    if spec.name == IMAGES:
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise InvalidArgument(f"{where}: shape must be [N] or [N, 1] (one encoded image per row), got {list(shape)}")
        return list(tensor.data)
    if spec.name == PIXELS:
        if len(shape) != 4 or shape[3] != 3:
            raise InvalidArgument(f"{where}: shape must be [N, H, W, 3] (RGB), got {list(shape)}")
        return list(tensor.data)
    assert spec.name == TENSOR
    if len(shape) != 4 or shape[1] != 3 or any(want != -1 and got != want for want, got in zip(spec.shape[2:], shape[2:], strict=True)):
        shown = ", ".join("H" if d == -1 else str(d) for d in spec.shape[2:])
        raise InvalidArgument(f"{where}: shape must be [N, 3, {shown}] (preprocessed) for model {sig.name}, "
                              f"got {list(shape)}")
    return list(tensor.data)


def embed_options(parameters: Mapping[str, Any]) -> EmbedOptions:
    layer = _parameter(parameters, "layer", str, "")
    pooling = _parameter(parameters, "pooling", str, "")
    if pooling not in ("", *Pooling):
        raise InvalidArgument(f"parameters pooling: expected one of {', '.join(Pooling)}, got {pooling[:40]!r}")
    return EmbedOptions(layer=layer, pooling=pooling, normalize=_parameter(parameters, "normalize", bool, False))


def decode_mode(parameters: Mapping[str, Any]) -> Optional[DecodeMode]:
    """The ``decode`` parameter -> the engine's override (absent: None, the model's own mode)."""
    if "decode" not in parameters:
        return None
    decode = _parameter(parameters, "decode", str, "")
    if decode not in (*DecodeMode,):
        raise InvalidArgument(f"parameters decode: expected one of {', '.join(DecodeMode)}, got {decode[:40]!r}")
    return DecodeMode(decode)


def _top_k(parameters: Mapping[str, Any], classes: int) -> int:
    top_k = _parameter(parameters, "top_k", int, 0)
    if top_k == 0:
        return min(DEFAULT_TOP_K, classes)
    if not 1 <= top_k <= classes:
        raise InvalidArgument(f"parameters top_k: must be 1..{classes} for this model "
                              f"(0 = {min(DEFAULT_TOP_K, classes)}), got {top_k}")
    return top_k


def _parameter(parameters: Mapping[str, Any], name: str, kind: type, default: Any) -> Any:
    value = parameters.get(name, default)
    # bool is an int in Python; neither may stand for the other here.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidArgument(f"parameters {name}: expected {kind.__name__}, got {type(value).__name__}")
    return value
