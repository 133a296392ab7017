"""The request path as small named steps: resolve -> prepare -> batch -> predict -> unbatch.

``Engine`` is what servicers call. It knows nothing about protobuf: images arrive as bytes or
numpy arrays, results leave as numpy arrays and dataclasses. With ``--cache-bytes`` the response
cache (``cache.py``) answers images it has seen, and only the others are prepared and batched.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
import dataclasses
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from featurizer.architectures import ArchitectureError, LayeredFeatures, Pooling
from featurizer.inference.cache import CacheKey, ResponseCache, digests
from featurizer.inference.device import DEFAULT_THREADS
from featurizer.inference.errors import FailedPrecondition, InvalidArgument
from featurizer.inference.gpu_decode import batch_decoder
from featurizer.inference.runner import FeatureOutput, Item, Output
from featurizer.metrics import Metrics
from featurizer.inference.models import ModelManager, ModelVersion
from featurizer.inference.preparation import Preparer, RawImage
from featurizer.inference.preprocessing import ImageLimits
from featurizer.inference.requests import ClassScore, EmbedOptions
from featurizer.registry.manifest import DecodeMode, InputMode, InputSpec, Kind
from featurizer.settings import Settings

DEFAULT_TOP_K = 5
INLINE_DIGEST_BYTES = 1 << 20  # more bytes per request are hashed on a thread (SHA-256: ~0.5 ms per MB here)


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
        limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)
        self.preparer = Preparer(limits, settings.preprocess_workers, settings.threads or DEFAULT_THREADS,
                                 batch_decoder(settings.decode_device, manager.device, limits))
        self.cache: Optional[ResponseCache] = None  # off: no object, no hashing
        if settings.cache_bytes > 0:
            self.cache = ResponseCache(settings.cache_bytes, metrics.cache_observer())
            manager.unload_listeners.append(self.cache.drop)

    def close(self) -> None:
        self.preparer.close()

    async def embed(self, model: str, version: int, images: Sequence[RawImage], options: EmbedOptions,
                    deadline: Optional[float] = None, decode: Optional[DecodeMode] = None) -> Embeddings:
        """``decode``: this request's JPEG decode mode (None: the model's ``input.decode``)."""
        mv = self.manager.resolve(model, version)
        backbone = self.manager.backbone_of(mv)
        output = self._embed_output(mv, options)
        async with self.manager.lease(mv, backbone):
            rows = await self._run(mv, backbone, images, (output,), deadline, decode)
        array = _finish(_stack(rows, 0), options)
        self.metrics.images.labels(mv.name).inc(len(images))
        return Embeddings(mv.name, mv.version, array)

    async def predict(self, model: str, version: int, images: Sequence[RawImage], top_k: int = 0,
                      features: Optional[EmbedOptions] = None, deadline: Optional[float] = None,
                      decode: Optional[DecodeMode] = None) -> Predictions:
        mv = self.manager.resolve(model, version)
        if mv.loaded_manifest.kind is Kind.FEATURES:
            raise FailedPrecondition(f"model {mv.name} is a features model; Predict needs a classifier or head (use Embed)")
        labels = mv.loaded_manifest.output.labels
        k = _top_k(top_k, len(labels))
        backbone = self.manager.backbone_of(mv)
        outputs: tuple[Output, ...] = (mv.head or FeatureOutput(None, Pooling.NONE),)
        if features is not None:
            if mv.head is None:
                raise FailedPrecondition(f"include_features: model {mv.name} is a standalone classifier with no backbone")
            outputs += (self._embed_output(backbone, features),)
        async with self.manager.lease(mv, backbone):
            rows = await self._run(mv, backbone, images, outputs, deadline, decode)
        logits = _stack(rows, 0).astype(np.float32)
        top, positive = _rank(logits, labels, k)
        feats = None
        if features is not None:
            feats = Embeddings(backbone.name, backbone.version, _finish(_stack(rows, 1), features))
        self.metrics.images.labels(mv.name).inc(len(images))
        return Predictions(mv.name, mv.version, top, positive, feats)

    def _embed_output(self, mv: ModelVersion, options: EmbedOptions) -> Output:
        if options.dtype not in ("float32", "float16"):
            raise InvalidArgument(f"options.output_dtype: expected float32 or float16, got {options.dtype}")
        if mv.head is not None or mv.loaded_manifest.kind is not Kind.FEATURES:
            if options.layer or options.pooling:
                raise InvalidArgument(f"options.layer/pooling apply to features models; {mv.name} is a {mv.loaded_manifest.kind}")
            return mv.head or FeatureOutput(None, Pooling.NONE)
        module = mv.backbone_serving.runner.module
        if not isinstance(module, LayeredFeatures):  # no named layers: its output as is
            if options.layer or options.pooling:
                raise InvalidArgument(f"options.layer/pooling: model {mv.name} has no selectable layers")
            return FeatureOutput(None, Pooling.NONE)
        layer = None
        if options.layer:
            try:
                layer = module.resolve_layer(options.layer)  # the model's own layer names
            except ArchitectureError as error:
                raise InvalidArgument(f"options.layer: {error}") from None
        try:
            pooling = Pooling.parse(options.pooling, "options.pooling") if options.pooling else module.pooling
        except ArchitectureError as error:
            raise InvalidArgument(str(error)) from None
        return FeatureOutput(layer, pooling)

    async def _run(self, mv: ModelVersion, backbone: ModelVersion, images: Sequence[RawImage],
                   outputs: tuple[Output, ...], deadline: Optional[float],
                   decode: Optional[DecodeMode] = None) -> list[tuple[torch.Tensor, ...]]:
        """One row per image for ``mv`` (computed by ``backbone``'s forward pass)."""
        self._check_count(images)
        spec = backbone.loaded_manifest.input
        if decode is not None and decode is not spec.decode:
            spec = dataclasses.replace(spec, decode=decode)  # the request's choice over the model's
        if self.cache is None:
            return await self._compute(backbone, mv.name, images, None, outputs, spec, deadline)
        return await self._cached(self.cache, mv, backbone, images, outputs, spec, deadline)

    async def _cached(self, cache: ResponseCache, mv: ModelVersion, backbone: ModelVersion,
                      images: Sequence[RawImage], outputs: tuple[Output, ...], spec: InputSpec,
                      deadline: Optional[float]) -> list[tuple[torch.Tensor, ...]]:
        """The cache's rows for the images it holds; only the others are prepared and batched (all
        hits: no admission, no decoding, no queue). Misses are stored once they passed every check."""
        total = sum(image.nbytes if isinstance(image, np.ndarray) else len(image) for image in images)
        found = await asyncio.to_thread(digests, images) if total > INLINE_DIGEST_BYTES else digests(images)
        keys = [CacheKey(mv, backbone, outputs, spec.decode, d) for d in found]
        rows = [cache.get(key) for key in keys]
        missing = [i for i, row in enumerate(rows) if row is None]
        self.metrics.cache_hits.labels(mv.name).inc(len(images) - len(missing))
        self.metrics.cache_misses.labels(mv.name).inc(len(missing))
        if missing:
            computed = await self._compute(backbone, mv.name, [images[i] for i in missing], missing, outputs,
                                           spec, deadline)
            for i, row in zip(missing, computed, strict=True):
                rows[i] = row
                cache.put(keys[i], row)
        return rows  # type: ignore[return-value]  # every miss was filled above

    async def _compute(self, backbone: ModelVersion, model: str, images: Sequence[RawImage],
                       indexes: Optional[Sequence[int]], outputs: tuple[Output, ...], spec: InputSpec,
                       deadline: Optional[float]) -> list[tuple[torch.Tensor, ...]]:
        """Prepare, admit and batch ``images``; ``indexes``: their places in the request (None: all of
        it, in order), which every error names."""
        started = time.perf_counter()
        plan = self.preparer.plan(images, spec, indexes)  # headers only: bad input is refused before overload
        # Admission before decoding: a refused request costs nothing, and images being prepared
        # count against --max-queue (otherwise refusals take as long as successes under load).
        serving = backbone.backbone_serving
        admission = serving.batcher.admit(len(images))
        try:
            tensors = await self.preparer.run(plan, spec, serving.min_side, serving.batcher.idle, deadline)
            self.metrics.preprocess.labels(model).observe(time.perf_counter() - started)
            _check_one_size(backbone, tensors, outputs, indexes or range(len(images)))
            rows = await serving.batcher.submit([Item(t, outputs) for t in tensors], deadline=deadline,
                                                 admission=admission)
        finally:
            admission.release()  # a no-op once submit took it
        _check_finite(rows, indexes or range(len(images)))
        return rows

    def _check_count(self, images: Sequence[RawImage]) -> None:
        if not images:
            raise InvalidArgument("images: at least one image is required")
        if len(images) > self.settings.max_images_per_request:
            raise InvalidArgument(f"images: {len(images)} images is above the limit of "
                                  f"{self.settings.max_images_per_request} per request")


def _check_one_size(backbone: ModelVersion, tensors: Sequence[torch.Tensor], outputs: tuple[Output, ...],
                    indexes: Sequence[int]) -> None:
    """Refuse, before the forward pass, native-size images of different sizes whose rows would
    differ in length: the response holds one tensor for all rows."""
    sizes = [tuple(t.shape[1:]) for t in tensors]
    if backbone.loaded_manifest.input.mode is not InputMode.NATIVE or len(set(sizes)) < 2:
        return
    varying = [o for o in outputs if isinstance(o, FeatureOutput) and _size_dependent(backbone, o)]
    if not varying:
        return
    other = next(i for i, size in enumerate(sizes) if size != sizes[0])
    (h0, w0), (h1, w1) = sizes[0], sizes[other]
    raise InvalidArgument(
        f"images[{indexes[0]}] is {w0}x{h0} and images[{indexes[other]}] is {w1}x{h1}: model {backbone.name} takes "
        f"images at their own size (input mode native), so pooling {varying[0].pooling!r} gives rows of different shapes, which "
        f"one response tensor cannot hold; use pooling avg or max, or send images of one size per request")


def _size_dependent(backbone: ModelVersion, output: FeatureOutput) -> bool:
    """Whether this output's per-image shape follows the input size on a native-size model."""
    if output.pooling not in (Pooling.NONE, Pooling.FLATTEN):
        return False  # global avg/max pooling: [C] whatever the size
    if isinstance(backbone.backbone_serving.runner.module, LayeredFeatures):
        return True  # a layered conv stack: every layer's map follows the input
    return -1 in backbone.output_shape  # the module's own output: as warm-up measured at two sizes


def _check_finite(rows: Sequence[tuple[torch.Tensor, ...]], indexes: Sequence[int]) -> None:
    """NaN or Inf in an answer is an error, never an OK: finite inputs (a float32 tensor of 3e38)
    can overflow inside the model."""
    for i, row in zip(indexes, rows, strict=True):
        if not all(bool(torch.isfinite(t).all()) for t in row):
            raise InvalidArgument(
                f"images[{i}]: the model's output for this image is not finite (NaN or Inf): its values overflow "
                f"the model's arithmetic; send pixels (uint8) or float32 tensors preprocessed to the model's range")


def _stack(rows: Sequence[tuple[torch.Tensor, ...]], k: int) -> np.ndarray:
    """Output ``k`` of every row as one array; rows of different shapes are refused, not a crash
    (``_check_one_size`` refuses the known case before the forward pass)."""
    shapes = {tuple(r[k].shape) for r in rows}
    if len(shapes) > 1:
        raise InvalidArgument(f"images: the rows have different shapes ({', '.join(str(list(s)) for s in sorted(shapes))}) "
                              f"and one response tensor cannot hold them; send images of one size per request")
    return np.stack([r[k] for r in rows])


def _finish(array: np.ndarray, options: EmbedOptions) -> np.ndarray:
    array = array.astype(np.float32, copy=False)
    if options.normalize:
        flat = array.reshape(len(array), -1)
        norms = np.linalg.norm(flat.astype(np.float64), axis=1, keepdims=True)  # float32 squares overflow
        array = (flat / np.where(norms == 0, 1, norms)).astype(np.float32).reshape(array.shape)
    if options.dtype != "float16":
        return array
    with np.errstate(over="ignore"):  # an overflow is refused just below, with the image's index
        half = array.astype(np.float16)
    finite = np.isfinite(half.reshape(len(half), -1)).all(axis=1)
    if not finite.all():
        raise InvalidArgument(f"images[{int(np.argmin(finite))}]: features exceed the float16 range (±65504); "
                              f"use output_dtype float32")
    return half


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
    top = [[ClassScore(label=labels[j], index=int(j), probability=float(p[j])) for j in row] for p, row in zip(probs, order, strict=True)]
    return top, positive
