"""A node's backups: made on demand (REST, cluster snapshots) or on a schedule.

One backup at a time per node. The database copy and the compression run in a worker
thread (:func:`caxton.backup.archive.make_backup`), so the node goes on serving; the
write-behind queue is flushed first so the backup holds every write acknowledged
before it started.

``[backup] schedule`` (a duration, e.g. ``"6h"``) makes one every interval, keeps the
newest ``retention`` in the backup directory and, with ``dest``, copies each to that
destination (a directory or ``s3://BUCKET/PREFIX``, :mod:`caxton.backup.destinations`)
and keeps ``retention`` there too. ``caxton_backup_last_success_timestamp_seconds``
says when the last one succeeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caxton.backup.archive import (
    Manifest,
    backup_path,
    list_backups,
    make_backup,
)
from caxton.errors import CaxtonError, NotFound

if TYPE_CHECKING:
    from caxton.node import Node

__all__ = ["BackupService", "backup_directory"]

log = logging.getLogger("caxton.backup")


def backup_directory(config: Any, data_dir: Path) -> Path:
    """``[backup] dir``, or ``DATA_DIR/backups``."""
    configured = config["backup"]["dir"]
    return Path(configured).expanduser() if configured else data_dir / "backups"


class BackupService:
    """Makes, lists and prunes the backups of one node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        settings = node.config["backup"]
        self.directory = backup_directory(node.config, node.data_dir)
        self.schedule: float = settings["schedule"] or 0.0
        self.retention: int = settings["retention"]
        self.dest: str | None = settings["dest"] or None
        self.kind: str = settings["type"]
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        #: Unix time of the last backup made (None: none since start).
        self.last_success: float | None = None
        self.last_failure: float | None = None
        self.made = 0
        self.failed = 0

    async def start(self) -> None:
        entries = await asyncio.to_thread(self.entries)
        made = [e["created_at"] for e in entries if "created_at" in e]
        self.last_success = max(made) if made else None
        if self.schedule > 0:
            self._task = asyncio.get_running_loop().create_task(
                self._scheduled(), name="caxton-backup-schedule"
            )

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def database(self) -> Path:
        path: Path = self.node.store.path
        return path

    async def create(self, kind: str | None = None) -> tuple[Path, Manifest]:
        """Make a backup now; its path and manifest. Waits for one under way."""
        async with self._lock:
            await self.node.store.flush()
            started = time.monotonic()
            try:
                path, manifest = await asyncio.to_thread(
                    make_backup,
                    self.database,
                    self.directory,
                    node_id=self.node.node_id,
                    kind=kind or self.kind,
                )
            except BaseException:
                self.failed += 1
                self.last_failure = time.time()
                raise
            self.made += 1
            self.last_success = time.time()
            log.info(
                "backup %s of node %s: %d agents, %d bytes in %.2fs",
                manifest.id,
                manifest.node_id,
                manifest.agents,
                manifest.database_size,
                time.monotonic() - started,
            )
            return path, manifest

    def entries(self) -> list[dict[str, Any]]:
        return list_backups(self.directory) if self.directory.is_dir() else []

    def path_of(self, backup_id: str) -> Path:
        path = backup_path(self.directory, backup_id)
        if not path.is_file():
            raise NotFound(f"no backup {backup_id} on node {self.node.node_id}")
        return path

    def prune(self, keep: int) -> list[str]:
        """Delete all but the newest ``keep`` backups of the directory; their ids."""
        removed = []
        entries = self.entries()
        for entry in entries[: max(0, len(entries) - keep)]:
            with contextlib.suppress(OSError):
                Path(entry["path"]).unlink()
                removed.append(entry["id"])
        return removed

    async def _scheduled(self) -> None:
        while True:
            await asyncio.sleep(self.schedule)
            try:
                path, _manifest = await self.create()
                if self.dest:
                    from caxton.backup.destinations import open_destination

                    destination = await asyncio.to_thread(open_destination, self.dest)
                    name = f"{self.node.node_id}/{path.name}"
                    await asyncio.to_thread(destination.put_file, path, name)
                    await asyncio.to_thread(
                        destination.prune, f"{self.node.node_id}/", self.retention
                    )
                self.prune(self.retention)
            except asyncio.CancelledError:
                raise
            except (CaxtonError, OSError) as exc:
                log.error("scheduled backup of node %s failed: %s", self.node.node_id, exc)
            except Exception:
                log.exception("scheduled backup of node %s failed", self.node.node_id)
