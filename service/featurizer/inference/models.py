"""Loaded models: the registry scan turned into servable versions, kept in sync while serving.

``ModelManager`` owns every ``ModelVersion`` (state, module, batcher) and the hot-reload loop:
new versions are loaded and warmed up off the event loop, changed ones reloaded, removed ones
drained (requests in flight finish) and closed. Requests resolve ``name[@version]`` or an alias
here and hold a lease on what they use.

One bad version fails alone (``loading``: whatever its load raises, it is FAILED with a reason).
Registry reads run on daemon threads with a time bound (``registry_io``), never on the event loop.
A version already serving keeps its loaded copy when a reload fails because the disk would not
answer (permission, I/O, a hung mount) or because of a featurizer bug; a reload that reads changed
files and finds them bad replaces it with the FAILED version, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable

from featurizer.inference.device import Device
from featurizer.inference.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from featurizer.inference.loading import HeadServing, ModelVersion, VersionLoader
from featurizer.registry.manifest import MANIFEST_FILE, Kind, Manifest
from featurizer.metrics import Metrics
from featurizer.registry.names import resolve_name
from featurizer.registry.registry import Registry, RegistryError, VersionDir
from featurizer.registry.reads import BoundedReads
from featurizer.settings import Settings
from featurizer.states import ModelState

log = logging.getLogger(__name__)
DRAIN_TIMEOUT_S = 60.0


class ModelManager:
    def __init__(self, registry: Registry, device: Device, settings: Settings, metrics: Metrics) -> None:
        self.registry = registry
        self.device = device
        self.settings = settings
        self.metrics = metrics
        self.aliases: dict[str, str] = {}
        self.versions: dict[tuple[str, int], ModelVersion] = {}
        self.unloading: list[ModelVersion] = []
        self.reads = BoundedReads(settings.registry_timeout)  # every registry read
        self.loader = VersionLoader(registry, device, settings, metrics, self.reads,
                                    lambda model, version: self.versions.get((model, version)))
        # Called with a version that will never serve again (removed, or replaced by a reload), at
        # once: the engine's response cache drops its rows here.
        self.unload_listeners: list[Callable[[ModelVersion], object]] = []
        self._unlisted: set[str] = set()
        self._sync_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()

    # ----- hot reload -------------------------------------------------------------------
    async def sync(self) -> None:
        """One reconciliation of memory with disk. A missing registry directory changes nothing."""
        async with self._sync_lock:
            try:
                scan = await self.reads.call("registry scan", self.registry.scan)
            except (RegistryError, OSError) as error:
                log.warning("registry scan skipped: %s", error)
                return
            if scan.alias_error:  # keep routing by the last good aliases
                log.warning("aliases.json ignored, keeping the previous aliases: %s", scan.alias_error)
            else:
                self.aliases = dict(scan.aliases)
            for name in set(scan.unlisted) - self._unlisted:
                log.warning("model %s kept as loaded, its directory cannot be listed: %s", name, scan.unlisted[name])
            self._unlisted = set(scan.unlisted)
            for key in [k for k in self.versions if k not in scan.versions and k[0] not in scan.unlisted]:
                self._start_unload(self.versions.pop(key))
            todo = [vd for vd in scan.versions.values() if self._needs_load(vd)]
            # Manifests first (off the loop, bounded), for the order: backbones before heads, so a
            # new head finds its new backbone, and heads on heads last, to be FAILED as such.
            manifests = {(vd.model, vd.version): await self._read_manifest(vd) for vd in todo}
            for vd in sorted(todo, key=lambda vd: _load_order(vd, manifests)):
                await self._load(vd, manifests[(vd.model, vd.version)])
            self._fail_orphaned_heads()

    def _needs_load(self, vd: VersionDir) -> bool:
        mv = self.versions.get((vd.model, vd.version))
        if mv is None or mv.retry_on_scan:
            return True
        if mv.fingerprint == vd.fingerprint:
            if mv.reload_failed:  # its files are back as they were when loaded
                mv.reason, mv.reload_failed, mv.reload_retry = "", (), False
                log.info("model %s: its files are readable again as loaded", mv.key)
            return False
        return vd.fingerprint != mv.reload_failed or mv.reload_retry

    async def _read_manifest(self, vd: VersionDir) -> Manifest | Exception:
        """The version's manifest, or what reading it raised (its load reports that)."""
        try:
            return await self.reads.call(f"{vd.model}/{vd.version}/{MANIFEST_FILE}",
                                         self.registry.manifest, vd.model, vd.version)
        except Exception as error:  # whatever it is, it fails this version only
            return error

    def _fail_orphaned_heads(self) -> None:
        """A head whose backbone is gone or not AVAILABLE stops serving: FAILED with the reason, and
        reloaded on a later scan once the backbone is back."""
        for mv in self.versions.values():
            if not isinstance(mv.serving, HeadServing) or mv.state is not ModelState.AVAILABLE:
                continue
            ref = mv.serving.backbone
            backbone = self.versions.get((ref.model, ref.version))
            if backbone is None or backbone.state is not ModelState.AVAILABLE:
                mv.wait_for(ref)
                self._publish_state(mv)
                log.warning("model %s FAILED: %s", mv.key, mv.reason)

    async def _load(self, vd: VersionDir, manifest: Manifest | Exception) -> None:
        mv = ModelVersion(vd.model, vd.version, vd.fingerprint)
        previous = self.versions.get((vd.model, vd.version))
        if previous is None:
            self.versions[(vd.model, vd.version)] = mv
        self._publish_state(mv)
        await self.loader.load(mv, manifest)
        if previous is not None:
            if mv.state is ModelState.FAILED and mv.keep_previous and previous.state is ModelState.AVAILABLE:
                previous.reason = f"serving the copy loaded earlier; reloading its changed files failed: {mv.reason}"
                previous.reload_failed, previous.reload_retry = vd.fingerprint, mv.retry
                log.warning("model %s keeps serving the copy loaded earlier: %s", mv.key, mv.reason)
                self._publish_state(previous)
                return
            self.versions[(vd.model, vd.version)] = mv
            if previous.state is not ModelState.FAILED:
                self._start_unload(previous, replaced=True)
            else:
                self._retired(previous)  # a head FAILED for its backbone may have served before
        self._publish_state(mv)

    def _start_unload(self, mv: ModelVersion, replaced: bool = False) -> None:
        """Stop routing to ``mv``; close it once its leases are returned (in-flight calls finish)."""
        if not replaced:
            mv.state, mv.reason = ModelState.UNLOADING, "removed from the registry; calls in flight finish"
            self._publish_state(mv)
        self._retired(mv)
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

    def _retired(self, mv: ModelVersion) -> None:
        for listener in self.unload_listeners:
            listener(mv)

    def _publish_state(self, mv: ModelVersion) -> None:
        self.metrics.set_model_state(mv.name, mv.version, mv.state)

    # ----- request side -----------------------------------------------------------------
    def resolve(self, model: str, version: int = 0) -> ModelVersion:
        """``model`` (name or alias) and ``version`` (0 = default) -> an AVAILABLE version."""
        if not model:
            raise InvalidArgument("model: required (a model name or alias; see ListModels)")
        if version < 0:
            raise InvalidArgument(f"version: must be >= 0 (0 = the default version), got {version}")
        name, version = self.resolve_alias(model, version)
        candidates = sorted((v for (n, v) in self.versions if n == name), reverse=True)
        draining = [mv for mv in self.unloading if mv.name == name and version in (0, mv.version)]
        if draining and (version == 0 and not candidates or version and (name, version) not in self.versions):
            raise Unavailable(f"model {name} version {draining[-1].version} is UNLOADING (removed from the "
                              f"registry); calls in flight finish, new ones go elsewhere")
        if not candidates:
            raise NotFound(f"model {_quote(model)} not found; known models: {', '.join(self.model_names()) or 'none'}")
        if version == 0:
            return self._default_version(name, candidates)
        return self._pinned_version(name, version, candidates)

    def _default_version(self, name: str, candidates: list[int]) -> ModelVersion:
        """The newest AVAILABLE version of ``name`` (``candidates``: its versions, newest first)."""
        for v in candidates:
            if self.versions[(name, v)].state is ModelState.AVAILABLE:
                return self.versions[(name, v)]
        latest = self.versions[(name, candidates[0])]
        raise Unavailable(f"model {name} has no AVAILABLE version (version {latest.version} is "
                          f"{latest.state.value}{': ' + latest.reason if latest.reason else ''})")

    def _pinned_version(self, name: str, version: int, candidates: list[int]) -> ModelVersion:
        mv = self.versions.get((name, version))
        if mv is None:
            raise NotFound(f"model {name} has no version {version}; versions: {', '.join(map(str, sorted(candidates)))}")
        if mv.state is ModelState.FAILED:
            raise FailedPrecondition(f"model {name} version {version} FAILED to load: {mv.reason}")
        if mv.state is not ModelState.AVAILABLE:
            raise Unavailable(f"model {name} version {version} is {mv.state.value}; retry")
        return mv

    def resolve_alias(self, model: str, version: int = 0) -> tuple[str, int]:
        """An alias (or plain name) and a requested version -> (model, version or the alias's pin or
        0), by the registry's rules; a cycle is FAILED_PRECONDITION."""
        try:
            return resolve_name(self.aliases, model, version)
        except RegistryError as error:
            raise FailedPrecondition(f"alias {_quote(model)}: {error}") from None

    def backbone_of(self, mv: ModelVersion) -> ModelVersion:
        """The version whose batcher computes ``mv``'s inputs (itself, unless it is a head)."""
        if not isinstance(mv.serving, HeadServing):
            return mv
        ref = mv.serving.backbone
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
        return {mv.name for mv in self.versions.values() if mv.state is ModelState.AVAILABLE}

    async def wait_unloaded(self) -> None:
        """Wait until every version being unloaded has drained its calls and closed."""
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        for mv in list(self.versions.values()) + list(self.unloading):
            if mv.batcher is not None:
                await mv.batcher.close()
        for task in list(self._tasks):
            task.cancel()
        self.loader.close()


def _load_order(vd: VersionDir, manifests: dict[tuple[str, int], Manifest | Exception]) -> tuple:
    """Sort key: not heads (or unreadable) first, then heads, then heads whose backbone is a head."""
    manifest = manifests[(vd.model, vd.version)]
    depth = 0
    if isinstance(manifest, Manifest) and manifest.kind is Kind.HEAD:
        ref = manifest.head_backbone()
        backbone = manifests.get((ref.model, ref.version))
        depth = 2 if isinstance(backbone, Manifest) and backbone.kind is Kind.HEAD else 1
    return depth, vd.model, vd.version


def _quote(text: str) -> str:
    return repr(text[:100])
