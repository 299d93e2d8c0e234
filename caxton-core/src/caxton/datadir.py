"""A node's data directory: owned by one node at a time, readable by its user only.

:class:`DataDirLock` holds an exclusive ``flock`` on ``DATA_DIR/caxton.lock`` for as
long as the node runs; the file holds the owner's pid. A second node started on the
same directory fails at once naming that pid, instead of restoring the first node's
agents beside it. The kernel drops the lock when the owner exits, however it exits
(``kill -9`` included), so a stale file never blocks a restart. :func:`lock_holder`
answers "is a node running on this directory?" (``caxton backup restore`` asks).

The directory is made ``0700`` and what the node keeps in it (the SQLite store with
its API-key hashes, the lock, certificates and keys) ``0600``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
from pathlib import Path

from caxton.errors import ConfigError, ValidationError

__all__ = [
    "LOCK_NAME",
    "DataDirLock",
    "DataDirLocked",
    "expand_user",
    "lock_holder",
    "private_directory",
]

log = logging.getLogger("caxton.node")

LOCK_NAME = "caxton.lock"


class DataDirLocked(ConfigError):
    """Another process holds the data directory."""


def expand_user(path: str | Path) -> Path:
    """``path`` with a leading ``~`` or ``~user`` expanded; a 400-style error, not a
    RuntimeError, when there is no such user or no home directory."""
    try:
        return Path(path).expanduser()
    except RuntimeError as exc:  # "Could not determine home directory."
        raise ValidationError(f"cannot expand {str(path)!r}: {exc}") from None


def private_directory(path: Path) -> None:
    """Make ``path`` (and missing parents) a directory only its owner can enter (0700).

    An existing directory that others may read is narrowed, with a log line.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        try:
            path.chmod(mode & 0o700)
        except OSError as exc:  # not ours (a shared mount): say so, go on
            log.warning("could not make %s private (mode %o): %s", path, mode, exc)
        else:
            log.info("data directory %s was mode %o; made it %o", path, mode, mode & 0o700)


def _read_pid(fd: int) -> int | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 32).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


class DataDirLock:
    """The exclusive lock of one data directory (``acquire`` / ``release``)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`DataDirLocked` naming the holder's pid."""
        if self._fd is not None:
            return
        private_directory(self.data_dir)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            holder = f"pid {pid}" if pid is not None else "another process"
            raise DataDirLocked(
                f"the data directory {self.data_dir} is in use by another node ({holder}); "
                f"stop it first, or give this node its own --data-dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fchmod(fd, 0o600)
        self._fd = fd

    def release(self) -> None:
        """Let the directory go (the file stays; an unlocked file means nobody holds it)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing drops the flock

    @property
    def held(self) -> bool:
        return self._fd is not None


def lock_holder(data_dir: Path) -> int | None:
    """The pid of the process holding ``data_dir`` (0 when it wrote none), or None when
    no process holds it."""
    path = Path(data_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            return pid if pid is not None else 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
