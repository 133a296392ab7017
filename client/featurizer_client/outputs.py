"""The files a bulk job writes as it goes: a ``.npy`` matrix, a names file, a failures file.

The matrix is a plain ``.npy`` (``np.load(path, mmap_mode="r")`` reads it without loading it).
It is created when the first row arrives (its dimension is known then) sized for every input,
each row is written at its offset with ``pwrite``, and at the end the header gets the real row
count and the file is cut to it. Rows are written, not memory-mapped: dirty pages of a
memory map count in the writer's resident memory until the kernel writes them back, so a
20,000 x 9,216 float32 job would grow the client by up to its 737 MB of rows; ``pwrite`` keeps
the client flat (the page cache is the kernel's). The header has a fixed length (room for any
count), so rewriting it never moves the rows.

Line files (names, failures, predict's results) are appended to and cut back on resume.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

HEADER_BYTES = 128  # magic, version, length, dict: fits a shape of (2**63-1, 2**31-1, 2**31-1, 2**31-1)
_MAGIC = b"\x93NUMPY\x01\x00"


@dataclass(frozen=True)
class OutputPaths:
    """Where a job's files go: ``emb.npy`` -> ``emb.names.txt``, ``emb.failures.jsonl``, ``emb.journal.json``."""

    results: Path
    names: Path
    failures: Path
    journal: Path

    @classmethod
    def beside(cls, results: Path) -> "OutputPaths":
        stem = results.with_suffix("") if results.suffix else results
        return cls(results, stem.with_name(stem.name + ".names.txt"), stem.with_name(stem.name + ".failures.jsonl"),
                   stem.with_name(stem.name + ".journal.json"))

    def all(self) -> tuple[Path, ...]:
        return self.results, self.names, self.failures, self.journal


def npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """A version 1.0 ``.npy`` header padded to ``HEADER_BYTES``, as ``np.load`` reads it."""
    text = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (np.dtype(dtype).str, tuple(shape))
    room = HEADER_BYTES - len(_MAGIC) - 2 - 1
    if len(text) > room:
        raise ValueError(f"a .npy header for shape {shape} does not fit in {HEADER_BYTES} bytes")
    return _MAGIC + struct.pack("<H", HEADER_BYTES - len(_MAGIC) - 2) + (text.ljust(room) + "\n").encode("latin1")


class NpyRows:
    """Rows of one shape and dtype written into ``path`` at their offsets, for ``capacity`` inputs."""

    def __init__(self, path: Path, capacity: int, row_shape: tuple[int, ...], dtype: np.dtype, *,
                 existing: bool) -> None:
        self.path = path
        self.row_shape = tuple(row_shape)
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self.capacity = capacity
        flags = os.O_RDWR | (0 if existing else os.O_CREAT | os.O_TRUNC)
        self._fd = os.open(path, flags, 0o644)
        if not existing:
            os.pwrite(self._fd, npy_header((capacity, *self.row_shape), self.dtype), 0)
            os.ftruncate(self._fd, HEADER_BYTES + capacity * self.row_bytes)

    def write(self, row_number: int, row: np.ndarray) -> None:
        data = np.ascontiguousarray(row, dtype=self.dtype)
        if data.shape != self.row_shape:
            raise ValueError(f"row {row_number} has shape {list(data.shape)}, the others {list(self.row_shape)}")
        os.pwrite(self._fd, data.tobytes(), HEADER_BYTES + row_number * self.row_bytes)

    def read(self, row_number: int) -> bytes:
        return os.pread(self._fd, self.row_bytes, HEADER_BYTES + row_number * self.row_bytes)

    def copy(self, source_row: int, row_number: int) -> None:
        os.pwrite(self._fd, self.read(source_row), HEADER_BYTES + row_number * self.row_bytes)

    def sync(self) -> None:
        os.fsync(self._fd)

    def finish(self, rows: int) -> None:
        """The header says ``rows`` and the file ends after the last one."""
        os.pwrite(self._fd, npy_header((rows, *self.row_shape), self.dtype), 0)
        os.ftruncate(self._fd, HEADER_BYTES + rows * self.row_bytes)
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def write_empty_npy(path: Path) -> None:
    """A job whose every item failed: a ``(0, 0)`` float32 matrix, with the same fixed header."""
    with open(path, "wb") as f:
        f.write(npy_header((0, 0), np.dtype("<f4")))
        f.flush()
        os.fsync(f.fileno())


class LineFile:
    """An append-only text file whose committed size is tracked in bytes (cut back on resume)."""

    def __init__(self, path: Path, committed: Optional[int]) -> None:
        """``committed``: the size to keep (resume), or None to start the file empty."""
        self.path = path
        self._f = open(path, "r+b" if committed is not None and path.exists() else "w+b")
        if committed is not None:
            self._f.truncate(committed)
        self._f.seek(0, os.SEEK_END)

    def write_line(self, text: str) -> None:
        self._f.write(text.encode("utf-8", "surrogateescape") + b"\n")

    @property
    def size(self) -> int:
        return self._f.tell()

    def sync(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()
