"""Loaded models: the registry scan turned into servable versions, kept in sync while serving.

``ModelManager`` owns every ``ModelVersion`` (state, module, batcher) and the hot-reload loop:
new versions are loaded and warmed up off the event loop, changed ones reloaded, removed ones
drained (requests in flight finish) and closed. Requests resolve ``name[@version]`` or an alias
here and hold a lease on what they use.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

from torch import nn

from .batcher import Batcher
from .builders import build
from .device import Device
from .errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from .inference import BackboneRunner, FeatureOutput, HeadOutput
from .manifest import Manifest, ManifestError
from .metrics import Metrics
from .registry import Registry, RegistryError, VersionDir, alias_chain
from .settings import Settings
from .warmup import check_output, min_side, own_pooling, warm_up

log = logging.getLogger(__name__)
DRAIN_TIMEOUT_S = 60.0


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

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def waiting_for_backbone(self) -> bool:
        return self.state is State.FAILED and self.reason.startswith("backbone ")


class ModelManager:
    def __init__(self, registry: Registry, device: Device, settings: Settings, metrics: Metrics) -> None:
        self.registry = registry
        self.device = device
        self.settings = settings
        self.metrics = metrics
        self.aliases: dict[str, str] = {}
        self.versions: dict[tuple[str, int], ModelVersion] = {}
        self.unloading: list[ModelVersion] = []
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")
        self._sync_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()

    # ----- hot reload -------------------------------------------------------------------
    async def sync(self) -> None:
        """One reconciliation of memory with disk. A missing registry directory changes nothing."""
        async with self._sync_lock:
            try:
                scan = await asyncio.get_running_loop().run_in_executor(self._loader, self.registry.scan)
            except (RegistryError, OSError) as error:
                log.warning("registry scan skipped: %s", error)
                return
            if scan.alias_error:  # keep routing by the last good aliases
                log.warning("aliases.json ignored, keeping the previous aliases: %s", scan.alias_error)
            else:
                self.aliases = dict(scan.aliases)
            for key in [k for k in self.versions if k not in scan.versions]:
                self._start_unload(self.versions.pop(key))
            todo = [vd for key, vd in scan.versions.items()
                    if key not in self.versions or self.versions[key].fingerprint != vd.fingerprint
                    or self.versions[key].waiting_for_backbone]
            # Backbones before heads, so a new head finds its new backbone.
            for vd in sorted(todo, key=lambda vd: (self._is_head(vd), vd.model, vd.version)):
                await self._load(vd)
            self._fail_orphaned_heads()

    def _fail_orphaned_heads(self) -> None:
        """A head whose backbone is gone or not AVAILABLE stops serving: FAILED with the reason, and
        reloaded on a later scan once the backbone is back."""
        for mv in self.versions.values():
            if mv.head is None or mv.state is not State.AVAILABLE:
                continue
            ref = mv.manifest.backbone
            backbone = self.versions.get((ref.model, ref.version))
            if backbone is None or backbone.state is not State.AVAILABLE:
                mv.state, mv.reason = State.FAILED, f"backbone {ref.model}@{ref.version} is not AVAILABLE"
                self._publish_state(mv)
                log.warning("model %s FAILED: %s", mv.key, mv.reason)

    def _is_head(self, vd: VersionDir) -> bool:
        try:
            return self.registry.manifest(vd.model, vd.version).kind == "head"
        except (ManifestError, OSError):
            return False

    async def _load(self, vd: VersionDir) -> None:
        mv = ModelVersion(vd.model, vd.version, vd.fingerprint)
        previous = self.versions.get((vd.model, vd.version))
        if previous is None:
            self.versions[(vd.model, vd.version)] = mv
        self._publish_state(mv)
        try:
            await self._load_into(mv)
            mv.state = State.AVAILABLE
            log.info("model %s loaded: kind=%s output=%s", mv.key, mv.manifest.kind, list(mv.output_shape))
        except (ManifestError, RegistryError, ValueError, RuntimeError, OSError, FailedPrecondition) as error:
            mv.state, mv.reason = State.FAILED, _short(str(error))
            self.metrics.load_failures.labels(mv.name).inc()
            log.warning("model %s FAILED: %s", mv.key, mv.reason)
        if previous is not None and previous is not mv:
            self.versions[(vd.model, vd.version)] = mv
            if previous.state is not State.FAILED:
                self._start_unload(previous, replaced=True)
        self._publish_state(mv)

    async def _load_into(self, mv: ModelVersion) -> None:
        loop = asyncio.get_running_loop()
        manifest = await loop.run_in_executor(self._loader, self.registry.manifest, mv.name, mv.version)
        mv.manifest = manifest
        module = await loop.run_in_executor(self._loader, self._build_module, mv.name, mv.version, manifest)
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

    def _build_module(self, name: str, version: int, manifest: Manifest) -> nn.Module:
        module = build(manifest.architecture, manifest.params)
        state = self.registry.load_weights(name, version, manifest)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ManifestError(f"weights do not fit architecture {manifest.architecture!r}: {error}") from None
        return self.device.prepare(module)

    async def _attach_head(self, mv: ModelVersion, manifest: Manifest, module: nn.Module) -> None:
        ref = manifest.backbone
        backbone = self.versions.get((ref.model, ref.version))
        if backbone is None or backbone.state is not State.AVAILABLE:
            raise FailedPrecondition(f"backbone {ref.model}@{ref.version} is not AVAILABLE")
        mv.head = HeadOutput(mv.key, module)
        mv.output_shape = await warm_up(backbone.runner, backbone.manifest, mv.head)
        check_output(manifest, mv.output_shape)

    def _start_unload(self, mv: ModelVersion, replaced: bool = False) -> None:
        """Stop routing to ``mv``; close it once its leases are returned (in-flight calls finish)."""
        if not replaced:
            mv.state, mv.reason = State.UNLOADING, "removed from the registry; calls in flight finish"
            self._publish_state(mv)
        self.unloading.append(mv)
        task = asyncio.get_running_loop().create_task(self._finish_unload(mv, replaced))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish_unload(self, mv: ModelVersion, replaced: bool) -> None:
        if mv.leases > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(mv.drained.wait(), DRAIN_TIMEOUT_S)
        if mv.batcher is not None:
            await mv.batcher.close()
        self.unloading.remove(mv)
        if not replaced and (mv.name, mv.version) not in self.versions:
            self.metrics.set_model_state(mv.name, mv.version, None)
        log.info("model %s unloaded", mv.key)

    def _publish_state(self, mv: ModelVersion) -> None:
        self.metrics.set_model_state(mv.name, mv.version, mv.state.value)

    # ----- request side -----------------------------------------------------------------
    def resolve(self, model: str, version: int = 0) -> ModelVersion:
        """``model`` (name or alias) and ``version`` (0 = default) -> an AVAILABLE version."""
        if not model:
            raise InvalidArgument("model: required (a model name or alias; see ListModels)")
        if version < 0:
            raise InvalidArgument(f"version: must be >= 0 (0 = the default version), got {version}")
        name, pinned = self.resolve_alias(model)
        version = version or pinned
        candidates = sorted((v for (n, v) in self.versions if n == name), reverse=True)
        draining = [mv for mv in self.unloading if mv.name == name and version in (0, mv.version)]
        if draining and (version == 0 and not candidates or version and (name, version) not in self.versions):
            raise Unavailable(f"model {name} version {draining[-1].version} is UNLOADING (removed from the "
                              f"registry); calls in flight finish, new ones go elsewhere")
        if not candidates:
            raise NotFound(f"model {_quote(model)} not found; known models: {', '.join(self.model_names()) or 'none'}")
        if version == 0:
            for v in candidates:
                if self.versions[(name, v)].state is State.AVAILABLE:
                    return self.versions[(name, v)]
            latest = self.versions[(name, candidates[0])]
            raise Unavailable(f"model {name} has no AVAILABLE version (version {latest.version} is "
                              f"{latest.state.value}{': ' + latest.reason if latest.reason else ''})")
        mv = self.versions.get((name, version))
        if mv is None:
            raise NotFound(f"model {name} has no version {version}; versions: {', '.join(map(str, sorted(candidates)))}")
        if mv.state is State.FAILED:
            raise FailedPrecondition(f"model {name} version {version} FAILED to load: {mv.reason}")
        if mv.state is not State.AVAILABLE:
            raise Unavailable(f"model {name} version {version} is {mv.state.value}; retry")
        return mv

    def resolve_alias(self, model: str) -> tuple[str, int]:
        """An alias (or plain name) -> (model, pinned version or 0); a cycle is FAILED_PRECONDITION."""
        try:
            return alias_chain(self.aliases, model)
        except RegistryError as error:
            raise FailedPrecondition(f"alias {_quote(model)}: {error}") from None

    def backbone_of(self, mv: ModelVersion) -> ModelVersion:
        """The version whose batcher computes ``mv``'s inputs (itself, unless it is a head)."""
        if mv.head is None:
            return mv
        ref = mv.manifest.backbone
        return self.resolve(ref.model, ref.version)

    @contextlib.asynccontextmanager
    async def lease(self, *versions: ModelVersion) -> AsyncIterator[None]:
        """Hold versions while a request uses them, so unloading waits for it."""
        for mv in versions:
            mv.leases += 1
        try:
            yield
        finally:
            for mv in versions:
                mv.leases -= 1
                if mv.leases == 0 and mv in self.unloading:
                    mv.drained.set()

    def model_names(self) -> list[str]:
        return sorted({name for name, _ in self.versions})

    def all_versions(self) -> Iterable[ModelVersion]:
        by_key = {(mv.name, mv.version): mv for mv in self.unloading}
        by_key.update(self.versions)
        return [by_key[k] for k in sorted(by_key)]

    def serving_models(self) -> set[str]:
        return {mv.name for mv in self.versions.values() if mv.state is State.AVAILABLE}

    async def wait_unloaded(self) -> None:
        """Wait until every version being unloaded has drained its calls and closed."""
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        for mv in list(self.versions.values()) + list(self.unloading):
            if mv.batcher is not None:
                await mv.batcher.close()
        for task in list(self._tasks):
            task.cancel()
        self._loader.shutdown(wait=False, cancel_futures=True)


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _quote(text: str) -> str:
    return repr(text[:100])
