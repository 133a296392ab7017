"""What a bulk job sends, one item per input, each labelled with where it came from.

A bulk job names every result by its source: the file's path for files, the input's position
for in-memory inputs (bytes, arrays, PIL images). Files are read only when their item is sent,
so a job holds at most its window of encoded images, however long the list.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import grpc

from .inputs import IMAGE_SUFFIXES, ImageLike, expand_inputs, to_image
from .v1 import featurizer_pb2 as pb

Source = Union[str, int]  # a file's path, or an in-memory input's index


@dataclass(frozen=True)
class Scan:
    """The files a list of paths, directories and globs names, and the files it leaves out.

    ``skipped``: files inside a directory or glob whose extension is not an image's; they are
    reported, never silently dropped. A file named on its own is always sent: the server judges it.
    Paths are kept as strings: a ``Path`` costs ~300 bytes more, 6 MB on a 20,000-file folder.
    """

    images: list[str]
    skipped: list[str]


def scan(items: Sequence[Union[str, os.PathLike]]) -> Scan:
    """Every image file ``items`` names, in order (directories and globs sorted as ``Path`` sorts
    them, i.e. as ``expand_paths`` does), plus the non-images."""
    images: list[str] = []
    skipped: list[str] = []
    for item in items:
        path = os.fspath(item)
        if os.path.isdir(path):
            found: Iterable[str] = _walk(path)
        elif os.path.exists(path):
            images.append(path)
            continue
        else:
            found = sorted((p for p in glob.glob(path, recursive=True) if os.path.isfile(p)),
                           key=lambda p: Path(p).parts)
            if not found:
                raise FileNotFoundError(f"no image file, directory or glob match for {path!r}")
        for p in found:
            (images if os.path.splitext(p)[1].lower() in IMAGE_SUFFIXES else skipped).append(p)
    return Scan(images, skipped)


def _walk(directory: str) -> Iterator[str]:
    """Files under ``directory``, depth first with each directory's names sorted: the order of
    ``sorted(Path(directory).rglob("*"))``, without holding a Path per file."""
    for name in sorted(os.listdir(directory)):
        full = os.path.join(directory, name)
        if os.path.isdir(full):
            yield from _walk(full)
        elif os.path.isfile(full):
            yield full


class Unreadable(Exception):
    """A file that could not be read on this machine: a failure of that item, never sent."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Item:
    """One input of a bulk job: its global index, its source and, once loaded, its message."""

    index: int
    source: Source
    value: ImageLike
    image: Optional[pb.Image] = None
    attempts: int = 0
    digest: bytes = field(default=b"", repr=False)

    def load(self) -> pb.Image:
        """The Image message, read from disk the first time (raises ``Unreadable``)."""
        if self.image is None:
            try:
                self.image = to_image(self.value)
            except FileNotFoundError as error:
                raise Unreadable(grpc.StatusCode.NOT_FOUND, f"cannot read file: {error.strerror}") from None
            except PermissionError as error:
                raise Unreadable(grpc.StatusCode.PERMISSION_DENIED, f"cannot read file: {error.strerror}") from None
            except OSError as error:
                raise Unreadable(grpc.StatusCode.UNKNOWN, f"cannot read file: {error}") from None
            except TypeError as error:
                raise Unreadable(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None
        return self.image

    def content_digest(self) -> bytes:
        """sha256 of the message as sent: identical files have identical digests."""
        if not self.digest:
            self.digest = hashlib.sha256(self.load().SerializeToString(deterministic=True)).digest()
        return self.digest

    def release(self) -> None:
        """Drop the message once answered: the job keeps only what is in flight."""
        self.image = None


def source_of(value: ImageLike, index: int) -> Source:
    return os.fspath(value) if isinstance(value, (str, os.PathLike)) else index


def items_of(images: ImageLike | Iterable[ImageLike], start: int = 0) -> Iterator[Item]:
    """The job's items, lazily; ``start`` skips that many inputs (already done) without reading them."""
    for index, value in enumerate(expand_inputs(images)):
        if index >= start:
            yield Item(index, source_of(value, index), value)
