"""One model version and its load: manifest, weights, module, warm-up, batcher.

``VersionLoader.load`` never raises for what a version holds or for a featurizer bug: the version
ends AVAILABLE, or FAILED with a reason fit for a client (files named relative to the registry
root, no server path, no traceback: those go to the log), so one bad version fails alone.
Registry reads go through ``BoundedReads`` (daemon threads, a time bound); building the module
runs on the loader thread; warm-up on the device's.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

from torch import nn

from featurizer.inference.batcher import Batcher
from featurizer.architectures.builders import build
from featurizer.inference.device import Device
from featurizer.inference.errors import FailedPrecondition
from featurizer.inference.runner import BackboneRunner, FeatureOutput, HeadOutput
from featurizer.registry.manifest import Manifest, ManifestError
from featurizer.metrics import Metrics
from featurizer.registry.registry import Registry, RegistryError
from featurizer.registry.reads import BoundedReads
from featurizer.settings import Settings
from featurizer.inference.warmup import check_output, min_side, own_pooling, warm_up

log = logging.getLogger("featurizer.inference.models")
LOAD_ERRORS = (ManifestError, RegistryError, ValueError, RuntimeError, OSError, FailedPrecondition)
INTERNAL_REASON = "internal error while loading this version; the server log has the details"


class State(str, enum.Enum):
    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    FAILED = "FAILED"
    UNLOADING = "UNLOADING"


@dataclass(eq=False)
class ModelVersion:
    """One version of one model, whatever its state."""

    name: str
    version: int
    fingerprint: tuple
    state: State = State.LOADING
    reason: str = ""
    manifest: Optional[Manifest] = None
    runner: Optional[BackboneRunner] = None     # features and classifier models
    batcher: Optional[Batcher] = None
    head: Optional[HeadOutput] = None           # head models
    output_shape: tuple[int, ...] = ()
    min_side: int = 1
    leases: int = 0
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    retry: bool = False            # FAILED by a read that may succeed later unchanged (a hung mount)
    keep_previous: bool = False    # FAILED for a reason that says nothing bad about its files
    reload_failed: tuple = ()      # AVAILABLE: fingerprint of files whose reload failed; not retried
    reload_retry: bool = False     # ... unless that failure may pass by itself

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def retry_on_scan(self) -> bool:
        """FAILED for a reason that may pass without its files changing: its backbone, a hung read."""
        return self.state is State.FAILED and (self.reason.startswith("backbone ") or self.retry)


class VersionLoader:
    """Loads versions for one ModelManager; ``backbone(model, version)`` finds a loaded one."""

    def __init__(self, registry: Registry, device: Device, settings: Settings, metrics: Metrics,
                 reads: BoundedReads, backbone: Callable[[str, int], Optional[ModelVersion]]) -> None:
        self.registry = registry
        self.device = device
        self.settings = settings
        self.metrics = metrics
        self.reads = reads
        self._backbone = backbone
        self._compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")  # no registry I/O

    async def load(self, mv: ModelVersion, manifest: Manifest | Exception) -> None:
        """Load ``mv`` (``manifest`` as read, or what reading it raised): AVAILABLE or FAILED."""
        try:
            if isinstance(manifest, Exception):
                raise manifest
            await self._load_into(mv, manifest)
        except LOAD_ERRORS as error:
            mv.state, mv.reason = State.FAILED, _reason(error)
            mv.keep_previous = bool(getattr(error, "transient", False))
            # A permission change shows in the next scan's fingerprint (file modes, a listing that
            # works again); an I/O fault or a hung mount may pass with nothing to see: retry those.
            mv.retry = mv.keep_previous and getattr(error, "errno", 0) not in (errno.EACCES, errno.EPERM)
        except Exception:  # a featurizer bug: this version FAILED, never the server
            log.exception("model %s: unexpected error while loading", mv.key)
            mv.state, mv.reason, mv.keep_previous = State.FAILED, INTERNAL_REASON, True
        else:
            mv.state = State.AVAILABLE
            log.info("model %s loaded: kind=%s output=%s", mv.key, mv.manifest.kind, list(mv.output_shape))
            return
        self.metrics.load_failures.labels(mv.name).inc()
        log.warning("model %s FAILED: %s", mv.key, mv.reason)

    async def _load_into(self, mv: ModelVersion, manifest: Manifest) -> None:
        loop = asyncio.get_running_loop()
        mv.manifest = manifest
        state = await self.reads.call(f"{mv.name}/{mv.version}/{manifest.weights.file}",
                                      self.registry.load_weights, mv.name, mv.version, manifest)
        module = await loop.run_in_executor(self._compute, self._build_module, manifest, state)
        if manifest.kind == "head":
            await self._attach_head(mv, manifest, module)
            return
        mv.runner = BackboneRunner(mv.key, module, self.device, manifest.input,
                                   observer=self.metrics.model_observer(mv.name, self.device.label))
        if manifest.input.mode == "native":
            mv.min_side = await loop.run_in_executor(self.device.executor, min_side, module, self.device)
        mv.output_shape = await warm_up(mv.runner, manifest, FeatureOutput(None, own_pooling(module)))
        check_output(manifest, mv.output_shape)
        mv.batcher = Batcher(
            mv.runner, name=mv.key,
            max_batch_size=manifest.batching.max_batch_size or self.settings.max_batch_size,
            max_delay_s=(manifest.batching.max_delay_ms if manifest.batching.max_delay_ms is not None
                         else self.settings.max_delay_ms) / 1000.0,
            max_queue=self.settings.max_queue,
            max_concurrent_batches=self.settings.max_concurrent_batches or (2 if self.device.type == "cuda" else 1),
            observer=self.metrics.model_observer(mv.name, self.device.label))

    def _build_module(self, manifest: Manifest, state: dict) -> nn.Module:
        module = build(manifest.architecture, manifest.params)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ManifestError(f"weights do not fit architecture {manifest.architecture!r}: {error}") from None
        return self.device.prepare(module)

    async def _attach_head(self, mv: ModelVersion, manifest: Manifest, module: nn.Module) -> None:
        ref = manifest.backbone
        backbone = self._backbone(ref.model, ref.version)
        if backbone is None or backbone.state is not State.AVAILABLE:
            raise FailedPrecondition(f"backbone {ref.model}@{ref.version} is not AVAILABLE")
        if backbone.runner is None:  # not "backbone ...": no later scan changes what it is
            raise ManifestError(f"'backbone' {ref.model}@{ref.version} is a head; a head sits on a features "
                                "or classifier model")
        mv.head = HeadOutput(mv.key, module)
        mv.output_shape = await warm_up(backbone.runner, backbone.manifest, mv.head)
        check_output(manifest, mv.output_shape)

    def close(self) -> None:
        self._compute.shutdown(wait=False, cancel_futures=True)


def _reason(error: BaseException) -> str:
    """A client-safe reason: an OSError's message holds a server path, so only its strerror."""
    if isinstance(error, OSError):
        return f"unreadable ({error.strerror or type(error).__name__})"
    return _short(str(error))


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
