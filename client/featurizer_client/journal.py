"""A bulk job's journal: how much of its output is on disk for good, written atomically.

The output files are written as answers arrive; the journal is rewritten every ``commit_every``
items, after the files' new bytes have been flushed and fsynced. So whatever happened to the
process (a crash, SIGKILL, Ctrl-C, power loss), everything the journal counts is on disk, and
anything after it is discarded on resume: the names and failures files are cut back to the sizes
the journal gives, matrix rows past its count are written again. The journal itself is replaced
whole (write a temporary file, fsync, rename over the old one), never left half written.

``job`` fingerprints what was asked (method, model, options, every source in order), so a
resume with other inputs or options is refused rather than mixing two jobs in one file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from .sources import Source

FORMAT = 1


class JournalMismatch(ValueError):
    """The journal on disk belongs to another job (other inputs, model or options)."""


@dataclass(frozen=True)
class Journal:
    job: str                          # fingerprint(...) of the job this output belongs to
    total: int                        # inputs in the job
    done: int = 0                     # inputs whose outcome is committed (row, failure or copy)
    rows: int = 0                     # rows committed to the results file
    row_shape: Optional[tuple[int, ...]] = None  # one row's shape, once the first row is known
    dtype: str = ""                   # the rows' numpy dtype ("<f4", "<f2"), once known
    results_bytes: int = 0            # committed size of a line-based results file (predict)
    names_bytes: int = 0              # committed size of the names file
    failures_bytes: int = 0           # committed size of the failures file
    complete: bool = False            # the output was finished (matrix header has the final count)
    format: int = field(default=FORMAT)

    def save(self, path: Path) -> None:
        """Replace the journal at ``path`` atomically (and durably: file and directory fsynced)."""
        data = asdict(self)
        data["row_shape"] = None if self.row_shape is None else list(self.row_shape)
        temporary = path.with_name(path.name + ".tmp")
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
        sync_directory(path.parent)

    @classmethod
    def load(cls, path: Path) -> Optional["Journal"]:
        """The journal at ``path``, or None when there is none (a job never committed)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        if data.get("format") != FORMAT:
            raise JournalMismatch(f"{path}: journal format {data.get('format')!r}, this client writes {FORMAT}")
        shape = data.get("row_shape")
        data["row_shape"] = None if shape is None else tuple(shape)
        return cls(**data)

    def check(self, job: str, path: Path) -> None:
        if self.job != job:
            raise JournalMismatch(f"{path} belongs to another job (other inputs, model or options); "
                                  f"remove it or write to another output to start this one")


def fingerprint(description: dict, sources: Iterable[Source]) -> str:
    """sha256 of what a job is: its options (JSON) and every source, in order."""
    digest = hashlib.sha256(json.dumps(description, sort_keys=True).encode())
    for source in sources:
        digest.update(b"\0" + str(source).encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def sync_directory(directory: Path) -> None:
    """fsync a directory so a rename in it survives power loss (a no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
