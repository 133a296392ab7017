"""Files of a registry, read and written so that a registry cannot be turned against its server.

Reading: a file must resolve inside the root (a symlink may not lead out of it) and be a regular
file (a FIFO or a device would block or never end), and every error names it relative to the
root, never by its server path, because load failures reach clients as reasons.
Writing: what is published is world-readable (files 0644, directories 0755) whatever the umask
and whatever mode a library wrote (safetensors writes 0600), since servers usually read the
registry as another user than the one who published into it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from pathlib import Path
from typing import BinaryIO

FILE_MODE = 0o644
DIR_MODE = 0o755
# Errors that say the disk would not answer, not what a version holds: a version already serving
# keeps its loaded copy through them (models.py).
TRANSIENT_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EIO, errno.ESTALE, errno.ETIMEDOUT,
                              errno.ENOTCONN, errno.EHOSTDOWN, errno.EAGAIN, errno.EINTR})


class RegistryError(ValueError):
    """A registry problem with a message fit for an operator (names the file and the fault)."""

    transient = False   # True: the file system would not answer (permission, I/O, a hung mount)


class UnreadableError(RegistryError):
    """A registry file that could not be read; ``errno`` says why (0 when no OSError was involved)."""

    def __init__(self, message: str, errno_: int = 0) -> None:
        super().__init__(message)
        self.errno = errno_
        self.transient = errno_ in TRANSIENT_ERRNOS


def _unreadable(relative: str, error: BaseException) -> UnreadableError:
    """Only the strerror of an OSError: its str() holds the server path."""
    return UnreadableError(f"{relative}: unreadable ({getattr(error, 'strerror', None) or error})",
                           getattr(error, "errno", 0) or 0)


def open_confined(root: Path, relative: str) -> BinaryIO:
    """``<root>/<relative>`` opened for reading, if it resolves inside ``root`` and is a regular
    file. Raises RegistryError naming ``relative``."""
    try:
        real_root = Path(root).resolve()
        path = (Path(root) / relative).resolve()
    except RuntimeError:  # a symlink loop (Python < 3.13); its message holds the server path
        raise UnreadableError(f"{relative}: unreadable ({os.strerror(errno.ELOOP)})", errno.ELOOP) from None
    except OSError as error:
        raise _unreadable(relative, error) from None
    if not path.is_relative_to(real_root):
        raise RegistryError(f"{relative}: resolves outside the registry root")
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (fstat refuses it just below);
        # O_NOFOLLOW: the path just resolved may not have become a symlink since.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        raise _unreadable(relative, error) from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise UnreadableError(f"{relative}: unreadable ({os.strerror(errno.EISDIR)})", errno.EISDIR)
        if not stat.S_ISREG(mode):
            raise UnreadableError(f"{relative}: unreadable (not a regular file: a FIFO, socket or device "
                                  "would block or never end)")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_confined(root: Path, relative: str) -> bytes:
    """All the bytes of a registry file (see ``open_confined``)."""
    with open_confined(root, relative) as handle:
        try:
            return handle.read()
        except OSError as error:
            raise _unreadable(relative, error) from None


def sha256_stream(handle: BinaryIO) -> str:
    digest = hashlib.sha256()
    for chunk in iter(lambda: handle.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()


def make_dirs(path: Path) -> None:
    """``mkdir -p`` whose new directories are DIR_MODE whatever the umask (existing ones are left
    as their owner set them)."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another publisher made it first
            directory.mkdir()
            os.chmod(directory, DIR_MODE)
