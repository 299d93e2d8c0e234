"""Logging setup for the ``caxton`` command: text or JSON lines, rotated files, never
secrets.

JSON lines (``observability.log_format = "json"``) carry ``ts``, ``level``, ``logger``,
``message`` and, where known, ``node_id``, ``agent``, ``conversation_id``,
``request_id``, ``trace_id`` and ``span_id``; an access-log line's fields (method,
path, status, duration...) are fields of the line itself, not JSON inside ``message``.
With ``observability.log_file`` the log goes to that file, rotated by size
(``log_max_bytes``) and by age (``log_rotation``: daily or hourly), keeping
``log_backups`` old files no older than ``log_retention_days``. See
docs/observability.md#logs.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["LEVELS", "JsonFormatter", "RotatingLogFile", "configure_logging", "trace_ids"]

LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

#: Seconds between two rotations by age.
ROTATION_SECONDS = {"daily": 86_400, "hourly": 3_600}

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")


def trace_ids(traceparent: str | None = None) -> tuple[str, str] | None:
    """(trace id, span id) of ``traceparent``, else of the current OpenTelemetry span
    (when the tracing extra is installed and a span is active)."""
    if traceparent:
        match = _TRACEPARENT.fullmatch(traceparent)
        return (match.group(1), match.group(2)) if match else None
    trace = sys.modules.get("opentelemetry.trace")  # loaded only when the node traces
    if trace is None:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return (f"{context.trace_id:032x}", f"{context.span_id:016x}")


class JsonFormatter(logging.Formatter):
    """One JSON object per line (see the module docstring for the fields)."""

    def __init__(self, node_id: str | None = None) -> None:
        super().__init__()
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        node_id = getattr(record, "node_id", None) or self.node_id
        if node_id:
            entry["node_id"] = node_id
        for key in ("agent", "conversation_id", "request_id"):
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            for key, value in access.items():
                entry.setdefault(key, value)
        ids = trace_ids(getattr(record, "traceparent", None))
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class RotatingLogFile(logging.handlers.BaseRotatingHandler):
    """A log file rotated when it reaches ``max_bytes`` (0: never by size) or when
    ``interval`` seconds have passed since it was started (0: never by age).

    Rotated files are ``NAME.1`` (newest) to ``NAME.<backups>``; older ones, and any
    older than ``retention`` seconds (0: kept), are deleted.
    """

    def __init__(
        self,
        filename: str | os.PathLike[str],
        *,
        max_bytes: int = 0,
        interval: float = 0.0,
        backups: int = 10,
        retention: float = 0.0,
        clock: Any = time.time,
    ) -> None:
        Path(filename).parent.mkdir(parents=True, exist_ok=True)
        super().__init__(os.fspath(filename), "a", encoding="utf-8", delay=False)
        self.max_bytes = max_bytes
        self.interval = interval
        self.backups = backups
        self.retention = retention
        self.clock = clock
        try:
            started = (
                os.stat(self.baseFilename).st_mtime
                if os.path.getsize(self.baseFilename)
                else clock()
            )
        except OSError:
            started = clock()
        self.opened_at = min(started, clock())

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        if self.interval and self.clock() - self.opened_at >= self.interval:
            return True
        if self.max_bytes and self.stream is not None:
            size = self.stream.tell() + len(self.format(record)) + 1
            return size > self.max_bytes
        return False

    def doRollover(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None
        base = self.baseFilename
        if self.backups > 0:
            for index in range(self.backups - 1, 0, -1):
                older = f"{base}.{index}"
                if os.path.exists(older):
                    os.replace(older, f"{base}.{index + 1}")
            if os.path.exists(base):
                os.replace(base, f"{base}.1")
        elif os.path.exists(base):
            os.remove(base)
        self._prune()
        self.stream = self._open()
        self.opened_at = self.clock()

    def _prune(self) -> None:
        """Delete rotated files past ``backups`` or older than ``retention``."""
        base = Path(self.baseFilename)
        now = self.clock()
        for path in base.parent.glob(base.name + ".*"):
            suffix = path.name[len(base.name) + 1 :]
            if not suffix.isdigit():
                continue
            too_many = int(suffix) > self.backups
            too_old = self.retention and now - path.stat().st_mtime > self.retention
            if too_many or too_old:
                path.unlink(missing_ok=True)


def log_handler(observability: dict[str, Any], node_id: str | None = None) -> logging.Handler:
    """The handler ``observability`` asks for: stderr, or the rotated ``log_file``."""
    file = observability.get("log_file")
    handler: logging.Handler
    if file:
        rotation = observability.get("log_rotation", "none")
        handler = RotatingLogFile(
            file,
            max_bytes=int(observability.get("log_max_bytes") or 0)
            if rotation in ("size", "daily", "hourly")
            else 0,
            interval=ROTATION_SECONDS.get(rotation, 0),
            backups=int(observability.get("log_backups", 10)),
            retention=float(observability.get("log_retention_days", 0)) * 86_400,
        )
    else:
        handler = logging.StreamHandler(sys.stderr)
    if observability.get("log_format") == "json":
        handler.setFormatter(JsonFormatter(node_id))
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    return handler


def configure_logging(
    level: str = "info",
    fmt: str = "text",
    file: str | None = None,
    *,
    observability: dict[str, Any] | None = None,
    node_id: str | None = None,
) -> None:
    """Send the process's logs where ``observability`` (a config section) says."""
    settings = dict(observability or {})
    settings.setdefault("log_format", fmt)
    settings.setdefault("log_file", file)
    handler = log_handler(settings, node_id)
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
        existing.close()
    root.addHandler(handler)
    root.setLevel(LEVELS.get(settings.get("log_level", level), logging.INFO))
    # aiohttp's access log is ours to format (structured access log in the API).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
