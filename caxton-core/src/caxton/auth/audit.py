"""The audit log: one JSON line per security-relevant action, rotated by size.

Each entry has ``time`` (Unix seconds), ``identity``, ``action``, ``target``,
``result`` (``success``, ``denied``, ``unauthenticated`` or ``failure``), ``status``
(the HTTP status when there is one), ``source`` (the client address) and
``request_id``; ``details`` is a short text. Callers never pass credentials: an
identity is a name such as ``key:0123456789abcdef`` or a token's subject.

The file is ``security.audit.path`` (default ``DATA_DIR/audit.log``); past
``security.audit.max_size`` bytes it moves to ``audit.log.1`` (up to
``security.audit.backups`` old files), through :class:`logging.handlers.RotatingFileHandler`;
each file is created readable by the node's user only.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["AUDITED_PERMISSIONS", "RESULTS", "AuditEntry", "AuditLog"]

#: What an entry's ``result`` may be.
RESULTS = ("success", "failure", "denied", "unauthenticated")
#: Requests needing these permissions are written to the audit log, whatever the outcome.
AUDITED_PERMISSIONS = frozenset({"deploy", "update", "remove", "config", "cluster"})


class _PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """Creates each file readable by the node's user only (0600)."""

    def _open(self) -> Any:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return os.fdopen(fd, "a", encoding=self.encoding)


@dataclass(frozen=True)
class AuditEntry:
    time: float
    identity: str | None
    action: str
    target: str | None
    result: str
    source: str | None
    request_id: str | None
    status: int | None = None
    details: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False)


class AuditLog:
    """Append entries to ``path`` and read them back, newest first."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_bytes: int = 10 * 1024 * 1024,
        backups: int = 5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.backups = backups
        self.clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handler = _PrivateRotatingFileHandler(
            self.path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
        self._handler.setFormatter(logging.Formatter("%(message)s"))

    def record(
        self,
        action: str,
        result: str,
        *,
        identity: str | None = None,
        target: str | None = None,
        source: str | None = None,
        request_id: str | None = None,
        status: int | None = None,
        details: str = "",
    ) -> AuditEntry:
        if result not in RESULTS:
            raise ValueError(f"audit result must be one of {', '.join(RESULTS)}, not {result!r}")
        entry = AuditEntry(
            self.clock(), identity, action, target, result, source, request_id, status, details
        )
        line = logging.LogRecord("caxton.audit", logging.INFO, "", 0, entry.to_json(), None, None)
        self._handler.emit(line)
        self._handler.flush()
        return entry

    def files(self) -> list[Path]:
        """The current file and its rotated copies, newest first."""
        candidates = [self.path] + [Path(f"{self.path}.{n}") for n in range(1, self.backups + 1)]
        return [path for path in candidates if path.exists()]

    def entries(self) -> Iterator[dict[str, Any]]:
        """Every entry, newest first (a line that is not JSON is skipped)."""
        for path in self.files():
            with path.open(encoding="utf-8") as stream:
                lines = stream.readlines()
            for line in reversed(lines):
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict):
                    yield entry

    def query(
        self,
        *,
        limit: int = 100,
        identity: str | None = None,
        action: str | None = None,
        result: str | None = None,
        since: float | None = None,
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` entries matching every filter given, newest first."""
        found: list[dict[str, Any]] = []
        for entry in self.entries():
            if since is not None and float(entry.get("time", 0)) < since:
                break  # entries are in time order: everything further is older
            if identity is not None and entry.get("identity") != identity:
                continue
            if action is not None and entry.get("action") != action:
                continue
            if result is not None and entry.get("result") != result:
                continue
            found.append(entry)
            if len(found) >= limit:
                break
        return found

    def close(self) -> None:
        self._handler.close()
