"""One model version and its load: manifest, weights, module, warm-up, batcher.

``VersionLoader.load`` never raises for what a version holds or for a featurizer bug: the version
ends AVAILABLE, or FAILED with a reason fit for a client (files named relative to the registry
root, no server path, no traceback: those go to the log), so one bad version fails alone.
Registry reads go through ``BoundedReads`` (daemon threads, a time bound); building the module
runs on the loader thread; warm-up on the device's.

What a loaded version serves with is one of two explicit variants: a backbone (features or
classifier model) owns a runner and a batcher; a head owns only its module, run as one more output
of its backbone's forward pass. Failures here are load failures (``LoadError``), never the
request-side domain errors, which only the request path raises.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional, Union

from torch import nn

from featurizer.inference.batcher import Batcher
from featurizer.inference.device import Device
from featurizer.inference.runner import BackboneRunner, FeatureOutput, HeadOutput
from featurizer.inference.warmup import check_output, min_side, own_pooling, warm_up
from featurizer.metrics import Metrics
from featurizer.registry.loader import load_module
from featurizer.registry.manifest import BackboneRef, InputMode, Kind, Manifest, ManifestError
from featurizer.registry.reads import BoundedReads
from featurizer.registry.registry import Registry, RegistryError
from featurizer.settings import Settings
from featurizer.states import ModelState

log = logging.getLogger("featurizer.inference.models")
INTERNAL_REASON = "internal error while loading this version; the server log has the details"


class LoadError(Exception):
    """A version cannot load now for a reason outside its own files (the base of the loader's own
    failures; file problems are ManifestError or RegistryError)."""


class BackboneUnavailable(LoadError):
    """A head's backbone is not AVAILABLE: the head waits for it and is retried on every scan."""

    def __init__(self, backbone: BackboneRef) -> None:
        super().__init__(waiting_reason(backbone))
        self.backbone = backbone


LOAD_ERRORS = (ManifestError, RegistryError, ValueError, RuntimeError, OSError, LoadError)


def waiting_reason(backbone: BackboneRef) -> str:
    return f"backbone {backbone.model}@{backbone.version} is not AVAILABLE"


@dataclass(frozen=True)
class BackboneServing:
    """A features or classifier version: its own runner and batcher, and the smallest input side
    its stack accepts (native inputs; 1 for fixed-size inputs)."""

    runner: BackboneRunner
    batcher: Batcher
    min_side: int = 1


@dataclass(frozen=True)
class HeadServing:
    """A head: its module, run as one more output of ``backbone``'s forward pass."""

    output: HeadOutput
    backbone: BackboneRef


Serving = Union[BackboneServing, HeadServing]


@dataclass(eq=False)
class ModelVersion:
    """One version of one model, whatever its state; ``serving`` is set once it has loaded."""

    name: str
    version: int
    fingerprint: tuple
    state: ModelState = ModelState.LOADING
    reason: str = ""
    manifest: Optional[Manifest] = None
    serving: Optional[Serving] = None
    output_shape: tuple[int, ...] = ()
    leases: int = 0
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    waiting_for: Optional[BackboneRef] = None  # FAILED: this backbone is not AVAILABLE; retried on scan
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
        return self.state is ModelState.FAILED and (self.waiting_for is not None or self.retry)

    def wait_for(self, backbone: BackboneRef) -> None:
        """FAILED until ``backbone`` is AVAILABLE again (a later scan reloads it)."""
        self.state, self.reason, self.waiting_for = ModelState.FAILED, waiting_reason(backbone), backbone

    @property
    def loaded_manifest(self) -> Manifest:
        """The manifest of a version past its first read (every AVAILABLE version has one)."""
        if self.manifest is None:
            raise LoadError(f"model {self.key} has no manifest yet")  # only loaded versions reach requests
        return self.manifest

    @property
    def backbone_serving(self) -> BackboneServing:
        """What a backbone serves with; the request path asks only AVAILABLE backbones for it."""
        if not isinstance(self.serving, BackboneServing):
            raise LoadError(f"model {self.key} is not a loaded backbone")
        return self.serving

    # Views of ``serving`` for the request path (None, or 1, when it is the other variant).
    @property
    def runner(self) -> Optional[BackboneRunner]:
        return self.serving.runner if isinstance(self.serving, BackboneServing) else None

    @property
    def batcher(self) -> Optional[Batcher]:
        return self.serving.batcher if isinstance(self.serving, BackboneServing) else None

    @property
    def min_side(self) -> int:
        return self.serving.min_side if isinstance(self.serving, BackboneServing) else 1

    @property
    def head(self) -> Optional[HeadOutput]:
        return self.serving.output if isinstance(self.serving, HeadServing) else None


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
        except BackboneUnavailable as error:
            mv.wait_for(error.backbone)
        except LOAD_ERRORS as error:
            mv.state, mv.reason = ModelState.FAILED, _reason(error)
            mv.keep_previous = bool(getattr(error, "transient", False))
            # A permission change shows in the next scan's fingerprint (file modes, a listing that
            # works again); an I/O fault or a hung mount may pass with nothing to see: retry those.
            mv.retry = mv.keep_previous and getattr(error, "errno", 0) not in (errno.EACCES, errno.EPERM)
        except Exception:  # a featurizer bug: this version FAILED, never the server
            log.exception("model %s: unexpected error while loading", mv.key)
            mv.state, mv.reason, mv.keep_previous = ModelState.FAILED, INTERNAL_REASON, True
        else:
            mv.state = ModelState.AVAILABLE
            log.info("model %s loaded: kind=%s output=%s", mv.key, manifest.kind, list(mv.output_shape))
            return
        self.metrics.load_failures.labels(mv.name).inc()
        log.warning("model %s FAILED: %s", mv.key, mv.reason)

    async def _load_into(self, mv: ModelVersion, manifest: Manifest) -> None:
        loop = asyncio.get_running_loop()
        mv.manifest = manifest
        state = await self.reads.call(f"{mv.name}/{mv.version}/{manifest.weights.file}",
                                      self.registry.load_weights, mv.name, mv.version, manifest)
        module = await loop.run_in_executor(self._compute, self._build_module, mv, manifest, state)
        if manifest.kind is Kind.HEAD:
            await self._attach_head(mv, manifest, module)
            return
        observer = self.metrics.model_observer(mv.name, self.device.label, self.device.memory_in_use)
        runner = BackboneRunner(mv.key, module, self.device, manifest.input, observer=observer)
        smallest = 1
        if manifest.input.mode is InputMode.NATIVE:
            smallest = await loop.run_in_executor(self.device.executor, min_side, module, self.device)
        mv.output_shape = await warm_up(runner, manifest, FeatureOutput(None, own_pooling(module)))
        check_output(manifest, mv.output_shape)
        batcher = Batcher(
            runner, name=mv.key,
            max_batch_size=manifest.batching.max_batch_size or self.settings.max_batch_size,
            max_delay_s=(manifest.batching.max_delay_ms if manifest.batching.max_delay_ms is not None
                         else self.settings.max_delay_ms) / 1000.0,
            max_queue=self.settings.max_queue,
            max_concurrent_batches=self.settings.max_concurrent_batches or (2 if self.device.type == "cuda" else 1),
            observer=observer)
        mv.serving = BackboneServing(runner, batcher, smallest)

    def _build_module(self, mv: ModelVersion, manifest: Manifest, state: dict) -> nn.Module:
        return self.device.prepare(load_module(manifest, state, f"{mv.name}/{mv.version}"))

    async def _attach_head(self, mv: ModelVersion, manifest: Manifest, module: nn.Module) -> None:
        ref = manifest.head_backbone()
        backbone = self._backbone(ref.model, ref.version)
        if backbone is None or backbone.state is not ModelState.AVAILABLE:
            raise BackboneUnavailable(ref)
        if not isinstance(backbone.serving, BackboneServing):  # no later scan changes what it is
            raise ManifestError(f"'backbone' {ref.model}@{ref.version} is a head; a head sits on a features "
                                "or classifier model")
        output = HeadOutput(mv.key, module)
        mv.output_shape = await warm_up(backbone.serving.runner, backbone.loaded_manifest, output)
        check_output(manifest, mv.output_shape)
        mv.serving = HeadServing(output, ref)

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
