"""The model registry on disk: ``<root>/<model>/<version>/{model.json, weights.safetensors}``.

This module knows the layout and nothing about serving: scanning, aliases, integrity and atomic
publishing. ``inference.models`` turns a scan into loaded, servable versions.

Every file read from a registry goes through ``Registry.read_file`` (``registry_files``: confined
to the root, regular files only, errors named relative to the root), and everything published is
world-readable whatever the umask.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Optional

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file, save_file

from featurizer.registry.manifest import MANIFEST_FILE, Manifest, ManifestError, parse_manifest
from featurizer.registry.files import (DIR_MODE, FILE_MODE, RegistryError, UnreadableError, make_dirs, open_confined,
                             read_confined, sha256_stream)
from featurizer.registry.names import alias_chain, parse_target, parse_version, valid_name

ALIASES_FILE = "aliases.json"


@dataclass(frozen=True)
class VersionDir:
    """One version directory as found by a scan; ``fingerprint`` changes when its files do."""

    model: str
    version: int
    path: Path
    fingerprint: tuple


@dataclass(frozen=True)
class Scan:
    versions: Mapping[tuple[str, int], VersionDir] = field(default_factory=dict)
    aliases: Mapping[str, str] = field(default_factory=dict)
    alias_error: str = ""
    # Model directories that could not be listed (name -> reason): their versions are unknown this
    # time, not removed, so a server keeps whatever it has of them.
    unlisted: Mapping[str, str] = field(default_factory=dict)


def _fingerprint(path: Path) -> tuple:
    parts: list[tuple] = []
    for child in sorted(path.iterdir()):
        try:
            st = child.stat()
            parts.append((child.name, st.st_size, st.st_mtime_ns, st.st_mode))
        except OSError as error:
            parts.append((child.name, repr(error)))
    return tuple(parts)


class Registry:
    """A registry root. Construct one per directory; it holds no state between scans."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def scan(self) -> Scan:
        """Every published version and the aliases. Hidden and temporary directories are skipped,
        so a version being written (``.tmp-*``) is never seen before its rename."""
        versions: dict[tuple[str, int], VersionDir] = {}
        unlisted: dict[str, str] = {}
        if not self.root.is_dir():
            raise RegistryError(f"registry directory {self.root} does not exist")
        for model_dir in sorted(self.root.iterdir()):
            if not model_dir.is_dir() or not valid_name(model_dir.name):
                continue
            try:
                children = list(model_dir.iterdir())
            except OSError as error:
                unlisted[model_dir.name] = f"{model_dir.name}/: unlistable ({error.strerror or error})"
                continue
            for version_dir in children:
                version = parse_version(version_dir.name)
                if version is None or not version_dir.is_dir():
                    continue
                try:
                    fingerprint = _fingerprint(version_dir)
                except OSError as error:
                    fingerprint = (repr(error),)
                versions[(model_dir.name, version)] = VersionDir(model_dir.name, version, version_dir, fingerprint)
        aliases, alias_error = self._read_aliases()
        return Scan(versions=versions, aliases=aliases, alias_error=alias_error, unlisted=unlisted)

    def open_file(self, relative: str) -> BinaryIO:
        """``<root>/<relative>`` opened for reading: see ``registry_files.open_confined``."""
        return open_confined(self.root, relative)

    def read_file(self, relative: str) -> bytes:
        """All the bytes of ``<root>/<relative>``, under the same rules as ``open_file``."""
        return read_confined(self.root, relative)

    def _read_aliases(self) -> tuple[dict[str, str], str]:
        try:
            raw = json.loads(self.read_file(ALIASES_FILE).decode("utf-8"))
        except UnreadableError as error:
            return ({}, "") if error.errno == errno.ENOENT else ({}, str(error))
        except RegistryError as error:
            return {}, str(error)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            return {}, f"{ALIASES_FILE}: unreadable ({error})"
        if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
            return {}, f"{ALIASES_FILE}: must map alias names to 'model[@version]' strings"
        bad = [k for k in raw if not valid_name(k)]
        if bad:
            return {}, f"{ALIASES_FILE}: invalid alias name {bad[0]!r}"
        return dict(raw), ""

    def manifest(self, model: str, version: int) -> Manifest:
        """The parsed ``model.json``. Raises ManifestError (missing, bad JSON, a broken rule) or
        RegistryError (unreadable, outside the root)."""
        where = f"{model}/{version}/{MANIFEST_FILE}"
        try:
            data = self.read_file(where)
        except UnreadableError as error:
            if error.errno == errno.ENOENT:
                raise ManifestError(f"{where}: missing") from None
            raise
        try:
            raw = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ManifestError(f"{where}: not valid JSON ({error})") from None
        return parse_manifest(raw, where)

    def load_weights(self, model: str, version: int, manifest: Manifest) -> dict[str, torch.Tensor]:
        """Check the sha256 and load with safetensors (never pickle). Raises RegistryError."""
        where = f"{model}/{version}/{manifest.weights.file}"
        data = self.read_file(where)  # read once: the bytes hashed are the bytes loaded
        digest = hashlib.sha256(data).hexdigest()
        if digest != manifest.weights.sha256:
            raise RegistryError(f"{where}: sha256 mismatch (manifest {manifest.weights.sha256[:12]}..., file {digest[:12]}...)")
        try:
            return load_safetensors(data)
        except Exception as error:  # safetensors raises its own error types
            raise RegistryError(f"{where}: not a valid safetensors file ({error})") from None

    def verify(self) -> list[str]:
        """Re-hash every weights file and check every alias; one line per problem (empty = all good)."""
        problems = []
        scan = self.scan()
        for (model, version) in sorted(scan.versions):
            try:
                manifest = self.manifest(model, version)
                path = self.root / model / str(version) / manifest.weights.file
                with self.open_file(f"{model}/{version}/{manifest.weights.file}") as handle:
                    digest = sha256_stream(handle)
                if digest != manifest.weights.sha256:
                    problems.append(f"{path}: sha256 {digest} does not match the manifest's {manifest.weights.sha256}")
            except (ManifestError, RegistryError, OSError) as error:
                problems.append(f"{model}/{version}: {error}")
        if scan.alias_error:
            problems.append(scan.alias_error)
        models = {model for model, _ in scan.versions}
        for alias in sorted(scan.aliases):
            try:
                model, version = alias_chain(scan.aliases, alias)
            except RegistryError as error:
                problems.append(f"{ALIASES_FILE}: {alias}: {error}")
                continue
            if model not in models or (version and (model, version) not in scan.versions):
                problems.append(f"{ALIASES_FILE}: {alias} -> {scan.aliases[alias]}: no such model version")
        return problems

    def publish(self, model: str, manifest: Manifest, weights: Mapping[str, torch.Tensor],
                extra_files: Optional[Mapping[str, bytes]] = None, version: Optional[int] = None) -> int:
        """Save ``weights`` as a new version, atomically; returns the version number used
        (the next free one unless ``version`` is given)."""
        tensors = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
        return self._publish(model, manifest, lambda path: save_file(tensors, str(path)), extra_files, version)

    def publish_file(self, model: str, manifest: Manifest, weights_file: Path, version: Optional[int] = None) -> int:
        """Copy an existing safetensors file in as a new version, after checking that it parses."""
        try:
            load_file(str(weights_file))
        except Exception as error:  # safetensors raises its own error types
            raise RegistryError(f"{weights_file}: not a valid safetensors file ({error})") from None
        return self._publish(model, manifest, lambda path: shutil.copyfile(weights_file, path), None, version)

    def _publish(self, model: str, manifest: Manifest, write_weights: Callable[[Path], object],
                 extra_files: Optional[Mapping[str, bytes]], version: Optional[int]) -> int:
        """Write a complete version to a hidden temporary directory, then rename it into place, so a
        scan never sees half a version. The manifest's sha256 is computed here from the bytes written."""
        if not valid_name(model):
            raise RegistryError(f"invalid model name {model!r}")
        model_dir = self.root / model
        make_dirs(model_dir)
        tmp = model_dir / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            weights_path = tmp / manifest.weights.file
            write_weights(weights_path)
            final = replace(manifest, weights=replace(manifest.weights, sha256=sha256_file(weights_path)))
            (tmp / MANIFEST_FILE).write_text(final.to_json(), encoding="utf-8")
            for name, data in (extra_files or {}).items():
                (tmp / name).write_bytes(data)
            # safetensors writes 0600 and the umask may be 077: set the modes, never inherit them.
            for child in tmp.iterdir():
                os.chmod(child, FILE_MODE)
            os.chmod(tmp, DIR_MODE)
            return self._rename_into_place(tmp, model_dir, version)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _rename_into_place(self, tmp: Path, model_dir: Path, version: Optional[int]) -> int:
        while True:
            existing = [v for v in map(parse_version, os.listdir(model_dir)) if v is not None]
            target = version if version is not None else max(existing, default=0) + 1
            try:
                os.rename(tmp, model_dir / str(target))  # fails if the target exists and is not empty
                return target
            except OSError as error:
                if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise  # not a race with another publisher: retrying cannot help
                if version is not None:
                    raise RegistryError(f"{model_dir.name}/{version} already exists") from None

    def set_alias(self, name: str, target: str) -> None:
        """Point ``name`` at ``model[@version]``, written atomically (write temp, rename)."""
        if not valid_name(name):
            raise RegistryError(f"invalid alias name {name!r}")
        parse_target(target)
        aliases, error = self._read_aliases()
        if error:
            raise RegistryError(error)
        aliases[name] = target
        alias_chain(aliases, name)  # refuse to write a cycle
        tmp = self.root / f".{ALIASES_FILE}.{uuid.uuid4().hex}"
        tmp.write_text(json.dumps(aliases, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, self.root / ALIASES_FILE)


def sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return sha256_stream(handle)
