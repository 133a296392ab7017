"""The request path as small named steps: resolve -> prepare -> batch -> predict -> unbatch.

``Engine`` is what servicers call. It knows nothing about protobuf: images arrive as bytes or
numpy arrays, results leave as numpy arrays and dataclasses.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from featurizer_client.messages import ClassScore, EmbedOptions  # the same options and scores the SDK uses

from .builders import resolve_alexnet_layer
from .device import DEFAULT_THREADS
from .errors import FailedPrecondition, InvalidArgument
from .inference import FeatureOutput, Item, Output
from .manifest import POOLINGS, ManifestError
from .metrics import Metrics
from .models import ModelManager, ModelVersion
from .preparation import Preparer, RawImage
from .preprocessing import ImageLimits
from .settings import Settings

DEFAULT_TOP_K = 5


@dataclass(frozen=True)
class Embeddings:
    model: str
    version: int
    array: np.ndarray          # [N, ...], row i for image i


@dataclass(frozen=True)
class Predictions:
    model: str
    version: int
    top: list[list[ClassScore]]               # per image, most probable first
    positive: list[float]                      # binary heads: P(labels[1]); else empty
    features: Optional[Embeddings] = None      # backbone features, when asked for


class Engine:
    def __init__(self, manager: ModelManager, settings: Settings, metrics: Metrics) -> None:
        self.manager = manager
        self.settings = settings
        self.metrics = metrics
        self.preparer = Preparer(ImageLimits(settings.max_image_bytes, settings.max_image_pixels),
                                 settings.preprocess_workers, settings.threads or DEFAULT_THREADS)

    def close(self) -> None:
        self.preparer.close()

    async def embed(self, model: str, version: int, images: Sequence[RawImage], options: EmbedOptions,
                    deadline: Optional[float] = None) -> Embeddings:
        mv = self.manager.resolve(model, version)
        backbone = self.manager.backbone_of(mv)
        output = self._embed_output(mv, options)
        async with self.manager.lease(mv, backbone):
            rows = await self._run(backbone, mv.name, images, (output,), deadline)
        array = _finish(np.stack([r[0] for r in rows]), options)
        self.metrics.images.labels(mv.name).inc(len(images))
        return Embeddings(mv.name, mv.version, array)

    async def predict(self, model: str, version: int, images: Sequence[RawImage], top_k: int = 0,
                      features: Optional[EmbedOptions] = None, deadline: Optional[float] = None) -> Predictions:
        mv = self.manager.resolve(model, version)
        if mv.manifest.kind == "features":
            raise FailedPrecondition(f"model {mv.name} is a features model; Predict needs a classifier or head (use Embed)")
        labels = mv.manifest.output.labels
        k = _top_k(top_k, len(labels))
        backbone = self.manager.backbone_of(mv)
        outputs: tuple[Output, ...] = (mv.head or FeatureOutput(None, "none"),)
        if features is not None:
            if mv.head is None:
                raise FailedPrecondition(f"include_features: model {mv.name} is a standalone classifier with no backbone")
            outputs += (self._embed_output(backbone, features),)
        async with self.manager.lease(mv, backbone):
            rows = await self._run(backbone, mv.name, images, outputs, deadline)
        logits = np.stack([r[0] for r in rows]).astype(np.float32)
        top, positive = _rank(logits, labels, k)
        feats = None
        if features is not None:
            feats = Embeddings(backbone.name, backbone.version, _finish(np.stack([r[1] for r in rows]), features))
        self.metrics.images.labels(mv.name).inc(len(images))
        return Predictions(mv.name, mv.version, top, positive, feats)

    def _embed_output(self, mv: ModelVersion, options: EmbedOptions) -> Output:
        if options.dtype not in ("float32", "float16"):
            raise InvalidArgument(f"options.output_dtype: expected float32 or float16, got {options.dtype}")
        if mv.head is not None or mv.manifest.kind != "features":
            if options.layer or options.pooling:
                raise InvalidArgument(f"options.layer/pooling apply to features models; {mv.name} is a {mv.manifest.kind}")
            return mv.head or FeatureOutput(None, "none")
        module = mv.runner.module
        if not hasattr(module, "forward_taps"):  # not a layered feature stack: its output as is
            if options.layer or options.pooling:
                raise InvalidArgument(f"options.layer/pooling: model {mv.name} has no selectable layers")
            return FeatureOutput(None, "none")
        layer = None
        if options.layer:
            try:
                layer = resolve_alexnet_layer(options.layer)
            except ManifestError as error:
                raise InvalidArgument(f"options.layer: {error}") from None
            if layer > module.cut:
                raise InvalidArgument(f"options.layer: {options.layer!r} is after this model's last layer ({module.cut})")
        pooling = options.pooling or module.pooling
        if pooling not in POOLINGS:
            raise InvalidArgument(f"options.pooling: expected one of {', '.join(POOLINGS)}, got {pooling!r}")
        return FeatureOutput(layer, pooling)

    async def _run(self, backbone: ModelVersion, model: str, images: Sequence[RawImage],
                   outputs: tuple[Output, ...], deadline: Optional[float]) -> list[tuple[torch.Tensor, ...]]:
        self._check_count(images)
        started = time.perf_counter()
        tensors = await self.preparer.prepare(images, backbone.manifest.input, backbone.min_side, backbone.batcher.idle)
        self.metrics.preprocess.labels(model).observe(time.perf_counter() - started)
        return await backbone.batcher.submit([Item(t, outputs) for t in tensors], deadline=deadline)

    def _check_count(self, images: Sequence[RawImage]) -> None:
        if not images:
            raise InvalidArgument("images: at least one image is required")
        if len(images) > self.settings.max_images_per_request:
            raise InvalidArgument(f"images: {len(images)} images is above the limit of "
                                  f"{self.settings.max_images_per_request} per request")


def _finish(array: np.ndarray, options: EmbedOptions) -> np.ndarray:
    array = array.astype(np.float32, copy=False)
    if options.normalize:
        flat = array.reshape(len(array), -1)
        norms = np.linalg.norm(flat, axis=1, keepdims=True)
        array = (flat / np.where(norms == 0, 1, norms)).reshape(array.shape)
    return array.astype(np.float16) if options.dtype == "float16" else array


def _top_k(top_k: int, classes: int) -> int:
    if top_k == 0:
        return min(DEFAULT_TOP_K, classes)
    if not 1 <= top_k <= classes:
        raise InvalidArgument(f"top_k: must be 1..{classes} for this model (0 = {min(DEFAULT_TOP_K, classes)}), got {top_k}")
    return top_k


def _rank(logits: np.ndarray, labels: Sequence[str], k: int) -> tuple[list[list[ClassScore]], list[float]]:
    """Softmax (multi-class) or sigmoid (one output unit, two labels) -> top-k scores per image."""
    if logits.shape[1] == 1:
        positive = (1.0 / (1.0 + np.exp(-logits[:, 0].astype(np.float64)))).tolist()
        probs = np.stack([1 - np.array(positive), np.array(positive)], axis=1)
    else:
        shifted = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(shifted.astype(np.float64))
        probs = exp / exp.sum(axis=1, keepdims=True)
        positive = []
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    top = [[ClassScore(label=labels[j], index=int(j), probability=float(p[j])) for j in row] for p, row in zip(probs, order)]
    return top, positive
