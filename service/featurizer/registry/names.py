"""Names in a registry: model and alias names, version directories, alias targets and chains.

The one set of rules for turning what a caller wrote (``alexnet``, ``alexnet@2``, an alias) into a
model and a version, shared by the registry on disk, the server and training.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Optional

from featurizer.registry.files import RegistryError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_ALIAS_HOPS = 8


def valid_name(name: str) -> bool:
    """Model and alias names: no path separators, no leading dot, so nothing escapes the root."""
    return bool(NAME_PATTERN.match(name)) and ".." not in name


def parse_version(name: str) -> Optional[int]:
    """'3' -> 3; anything else ('03', '0', '.tmp-...', 'x') -> None, so one version has one directory."""
    if not name.isdigit() or name.startswith("0"):
        return None
    return int(name)


def parse_target(target: str) -> tuple[str, int]:
    """'model' -> (model, 0); 'model@3' -> (model, 3). Raises RegistryError."""
    name, _, version = target.partition("@")
    if not valid_name(name):
        raise RegistryError(f"alias target {target!r}: invalid model name")
    if version == "":
        return name, 0
    if not version.isdigit() or int(version) <= 0:
        raise RegistryError(f"alias target {target!r}: version must be a positive integer")
    return name, int(version)


def alias_chain(aliases: Mapping[str, str], name: str) -> tuple[str, int]:
    """Follow ``name`` through ``aliases`` to (model, version); 0 = default version. The first
    pinned version on the way wins. Raises RegistryError on a cycle or a bad target."""
    seen = [name]
    model, version = name, 0
    while model in aliases:
        model, pinned = parse_target(aliases[model])
        version = version or pinned
        if model in seen or len(seen) > MAX_ALIAS_HOPS:
            raise RegistryError(f"alias cycle: {' -> '.join(seen + [model])}")
        seen.append(model)
    return model, version


def resolve_name(aliases: Mapping[str, str], name: str, version: int = 0) -> tuple[str, int]:
    """A model name or alias and a requested ``version`` (0 = the default) -> (model, version): the
    one resolution rule the server and training share. A version asked for beats one an alias
    pins; 0 is left for the caller to turn into its default (the server: the highest AVAILABLE,
    training: the highest published). Raises RegistryError on an alias cycle or a bad target."""
    model, pinned = alias_chain(aliases, name)
    return model, version or pinned
