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
import time
from pathlib import Path

from caxton.errors import ConfigError, ValidationError

__all__ = [
    "LOCK_NAME",
    "STOPPING_WAIT",
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


#: How long a node waits for a data directory whose holder is stopping (seconds).
STOPPING_WAIT = 30.0


def _read_holder(fd: int) -> tuple[int | None, bool]:
    """The pid the lock file names, and whether its node said it is stopping."""
    os.lseek(fd, 0, os.SEEK_SET)
    words = os.read(fd, 64).decode("ascii", "replace").split()
    pid = int(words[0]) if words and words[0].isdigit() else None
    return pid, words[1:2] == ["stopping"]


class DataDirLock:
    """The exclusive lock of one data directory (``acquire`` / ``release``)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, stopping_wait: float = STOPPING_WAIT) -> None:
        """Take the lock, or raise :class:`DataDirLocked` naming the holder's pid.

        A holder that marked itself stopping (:meth:`mark_stopping`: a node that left, or
        got SIGTERM, and is closing) is waited for, up to ``stopping_wait`` seconds: a
        rolling restart's start command may run while the old process still closes its
        store. A holder that is running is refused at once.
        """
        if self._fd is not None:
            return
        private_directory(self.data_dir)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            self._lock(fd, stopping_wait)
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # reading the holder moved the offset
        os.fchmod(fd, 0o600)
        self._fd = fd

    def _lock(self, fd: int, stopping_wait: float) -> None:
        deadline = time.monotonic() + stopping_wait
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pid, stopping = _read_holder(fd)
            holder = f"pid {pid}" if pid is not None else "another process"
            if not stopping:
                raise DataDirLocked(
                    f"the data directory {self.data_dir} is in use by another node "
                    f"({holder}); stop it first, or give this node its own --data-dir"
                )
            if time.monotonic() >= deadline:
                raise DataDirLocked(
                    f"the data directory {self.data_dir} is still held by a node that is "
                    f"stopping ({holder}) after {stopping_wait:g} s; wait for it to exit"
                )
            if not said:
                log.info(
                    "waiting for the node stopping on %s (%s) to let it go", self.data_dir, holder
                )
                said = True
            time.sleep(0.05)

    def mark_stopping(self) -> None:
        """Say in the lock file that this node is closing: a node started on the same
        directory meanwhile waits for it (:meth:`acquire`) instead of failing."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
                os.pwrite(self._fd, f"{os.getpid()} stopping\n".encode(), 0)

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
            pid = _read_holder(fd)[0]
            return pid if pid is not None else 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
