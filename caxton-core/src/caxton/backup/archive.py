"""One node's backup file: made online from the live database, checked, restored.

A backup is a gzip-compressed tar of two members, in this order:

- ``manifest.json``: what the backup is (:class:`Manifest`: node id, Caxton and SQLite
  versions, schema versions, agent count, the database's size and sha256);
- ``state.db``: a consistent copy of the node's SQLite database, made with SQLite's
  online backup API (``sqlite3.Connection.backup``) from a connection of its own in a
  worker thread, never by copying the file. In WAL mode (the default) that copy is one
  read transaction, so it neither blocks the node's writer nor the event loop, and it
  sees the database as of one commit.

A backup is written under a hidden ``.*.partial`` name and renamed into place once it is
complete and on disk (``fsync`` of the file and of the directory), so a crash at any
moment leaves either a whole backup or a partial file that :func:`list_backups` never
reports (and the next backup removes).

:func:`verify_backup` checks the manifest, the sha256 and ``PRAGMA integrity_check``;
:func:`restore_backup` puts a verified backup in place of a stopped node's database and
keeps the replaced one aside.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import platform
import re
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from caxton import __version__
from caxton.datadir import lock_holder, private_directory
from caxton.errors import CaxtonError, Conflict, NotFound, ValidationError

__all__ = [
    "BACKUP_TYPES",
    "BackupError",
    "Manifest",
    "RestoreResult",
    "backup_database",
    "backup_path",
    "find_backup",
    "list_backups",
    "make_backup",
    "read_manifest",
    "restore_backup",
    "running_node",
    "store_in_use",
    "verify_backup",
]

FORMAT = "caxton-backup"
FORMAT_VERSION = 1
SUFFIX = ".tar.gz"
MANIFEST_MEMBER = "manifest.json"
DATABASE_MEMBER = "state.db"
#: ``full``: the whole database. ``state``: what the agents need to run again (agents,
#: modules, key/value state, conversations, queued and durable messages), without the
#: node's API keys, dead letters and other nodes' replicas.
BACKUP_TYPES = ("full", "state")
#: Tables a ``state`` backup drops (when they exist).
NOT_STATE_TABLES = ("api_keys", "dead_letters", "agent_replicas")
#: gzip level: 1 is several times faster than the default 9 and a SQLite file of
#: mostly key/value blobs compresses little more at higher levels.
COMPRESS_LEVEL = 1
CHUNK = 8 * 1024 * 1024
_ID = re.compile(r"^backup-\d{8}-\d{6}(-\d+)?$")


class BackupError(CaxtonError):
    """A backup cannot be made, read, verified or restored."""

    http_status = 422
    error = "Backup error"


@dataclass(frozen=True)
class Manifest:
    """What a backup holds; the first member of the archive."""

    id: str
    node_id: str
    type: str
    created_at: float
    caxton_version: str
    sqlite_version: str
    python_version: str
    schema_versions: dict[str, int]
    agents: int
    database_size: int
    database_sha256: str
    #: Why it was made, when not on request ("before migrating core v4 -> v5").
    note: str = ""
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise BackupError("not a Caxton backup: its manifest.json is not a backup manifest")
        if data.get("format_version") != FORMAT_VERSION:
            raise BackupError(
                f"backup format version {data.get('format_version')!r} is not one this "
                f"Caxton reads ({FORMAT_VERSION}); restore it with a matching Caxton"
            )
        try:
            return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        except TypeError as exc:
            raise BackupError(f"the backup manifest is incomplete: {exc}") from None


@dataclass(frozen=True)
class RestoreResult:
    manifest: Manifest
    database: Path
    #: Where the database that was replaced now is (None: there was none).
    replaced: Path | None


# -------------------------------------------------------------------------
# Making a backup
# -------------------------------------------------------------------------


def private_file(path: Path) -> IO[bytes]:
    """Open ``path`` for writing, readable by its owner only (0600): backups hold the
    node's whole store, API-key hashes included (see :mod:`caxton.datadir`)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    return os.fdopen(os.open(path, flags, 0o600), "wb")


def backup_database(source: Path, target: Path, *, pages: int = -1) -> None:
    """Copy the SQLite database ``source`` to ``target`` with the online backup API.

    Blocking: run it in a thread. ``pages=-1`` copies in one step, inside one read
    transaction: in WAL mode writers go on meanwhile and the copy is the database as of
    one commit. (In steps, a write by another connection restarts the copy.)
    """
    private_file(target).close()  # SQLite keeps the mode of the file it is given
    src = sqlite3.connect(source, timeout=30)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst, pages=pages)
            # A self-contained file: no -wal/-shm beside the copy or its restored self.
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise BackupError(f"cannot back up the state store {source}: {exc}") from exc
    finally:
        src.close()


def _describe(db: Path) -> tuple[dict[str, int], int]:
    """Schema versions and agent count of a database file."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        versions = {
            str(ns): int(v)
            for ns, v in conn.execute(
                "SELECT namespace, MAX(version) FROM schema_migrations GROUP BY namespace"
            )
        }
        agents = int(conn.execute("SELECT COUNT(*) FROM agents").fetchone()[0])
    except sqlite3.Error as exc:
        raise BackupError(f"the copied database {db} is not a Caxton state store: {exc}") from exc
    finally:
        conn.close()
    return versions, agents


def _strip_to_state(db: Path) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for table in NOT_STATE_TABLES:
            if table in tables:
                conn.execute(f"DELETE FROM {table}")
        conn.execute("VACUUM")
    finally:
        conn.close()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def new_backup_id(directory: Path, now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))
    candidate, n = f"backup-{stamp}", 1
    while (directory / f"{candidate}{SUFFIX}").exists():
        n += 1
        candidate = f"backup-{stamp}-{n}"
    return candidate


def backup_path(directory: Path, backup_id: str) -> Path:
    """The file of backup ``backup_id`` in ``directory`` (the id is checked)."""
    if not _ID.match(backup_id):
        raise ValidationError(
            f"invalid backup id {backup_id!r}: expected backup-YYYYMMDD-HHMMSS[-N] "
            f"(see `caxton backup list`)"
        )
    return directory / f"{backup_id}{SUFFIX}"


def remove_stale_partials(directory: Path) -> None:
    """Remove ``.*.partial`` files left by a backup whose process is gone."""
    for partial in directory.glob(".backup-*.partial"):
        match = re.search(r"\.(\d+)\.partial$", partial.name)
        if match and _pid_alive(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            partial.unlink()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def make_backup(
    database: Path,
    directory: Path,
    *,
    node_id: str,
    kind: str = "full",
    backup_id: str | None = None,
    note: str = "",
    copy: Callable[[Path, Path], None] = backup_database,
) -> tuple[Path, Manifest]:
    """Back up ``database`` into ``directory``; return the backup's path and manifest.

    Blocking (run it in a thread). ``copy`` makes the consistent copy of the database
    (the default opens its own connection; see :func:`backup_database`).
    """
    if kind not in BACKUP_TYPES:
        raise ValidationError(f"backup type must be one of {', '.join(BACKUP_TYPES)}, not {kind!r}")
    if not database.exists():
        raise NotFound(f"there is no state store at {database} to back up")
    private_directory(directory)
    remove_stale_partials(directory)
    backup_id = backup_id or new_backup_id(directory)
    final = backup_path(directory, backup_id)
    tag = f".{backup_id}.{os.getpid()}"
    db_copy = directory / f"{tag}.db.partial"
    archive = directory / f"{tag}{SUFFIX}.partial"
    try:
        copy(database, db_copy)
        if kind == "state":
            _strip_to_state(db_copy)
        versions, agents = _describe(db_copy)
        manifest = Manifest(
            id=backup_id,
            node_id=node_id,
            type=kind,
            created_at=time.time(),
            caxton_version=__version__,
            sqlite_version=sqlite3.sqlite_version,
            python_version=platform.python_version(),
            schema_versions=versions,
            agents=agents,
            database_size=db_copy.stat().st_size,
            database_sha256=_sha256(db_copy),
            note=note,
        )
        write_archive(archive, manifest, db_copy)
        os.replace(archive, final)
        _fsync_directory(directory)
    finally:
        for leftover in (db_copy, archive):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
    return final, manifest


def write_archive(path: Path, manifest: Manifest, database: Path) -> None:
    """The archive: manifest first, then the database; flushed to disk before return."""
    with private_file(path) as raw:
        # Big pieces (copybufsize): zlib and hashlib let go of the GIL for each call,
        # and taking it back behind a busy event loop costs up to a switch interval
        # (5 ms) each time; tarfile's 16 KiB default made 75 MiB take 29 s under load.
        with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=COMPRESS_LEVEL) as tar:
            tar.copybufsize = CHUNK  # type: ignore[attr-defined]  # (not in typeshed)
            add_bytes(tar, MANIFEST_MEMBER, json.dumps(manifest.to_dict(), indent=2).encode())
            tar.add(database, arcname=DATABASE_MEMBER, recursive=False)
        raw.flush()
        os.fsync(raw.fileno())


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -------------------------------------------------------------------------
# Reading and verifying
# -------------------------------------------------------------------------


@contextlib.contextmanager
def _open_archive(path: Path) -> Iterator[tarfile.TarFile]:
    try:
        tar = tarfile.open(path, mode="r:gz")  # noqa: SIM115 - closed below, after the checks
    except FileNotFoundError:
        raise NotFound(f"no backup at {path}") from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BackupError(f"{path} is not a readable backup: {exc}") from None
    with tar:
        yield tar


def _member(tar: tarfile.TarFile, path: Path, name: str) -> IO[bytes]:
    try:
        member = tar.next()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BackupError(f"{path} is damaged: {exc}") from None
    if member is None or member.name != name or not member.isfile():
        raise BackupError(f"{path} is not a Caxton backup: expected {name} next in the archive")
    stream = tar.extractfile(member)
    assert stream is not None
    return stream


def read_manifest(path: Path) -> Manifest:
    """The manifest of the backup at ``path`` (reads only the archive's head)."""
    with _open_archive(path) as tar:
        stream = _member(tar, path, MANIFEST_MEMBER)
        try:
            data = json.loads(stream.read(1024 * 1024))
        except (ValueError, tarfile.TarError, OSError, EOFError) as exc:
            raise BackupError(f"{path}: unreadable manifest ({exc})") from None
    return Manifest.from_dict(data)


def extract_verified(path: Path, target: Path) -> Manifest:
    """Check the backup at ``path`` and write its database to ``target``.

    Checks: the manifest, the database's size and sha256 against it, ``PRAGMA
    integrity_check``, and the schema versions and agent count against the manifest.
    """
    with _open_archive(path) as tar:
        stream = _member(tar, path, MANIFEST_MEMBER)
        try:
            manifest = Manifest.from_dict(json.loads(stream.read(1024 * 1024)))
            stream = _member(tar, path, DATABASE_MEMBER)
            digest, size = hashlib.sha256(), 0
            with private_file(target) as out:
                while chunk := stream.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except (ValueError, tarfile.TarError, OSError, EOFError) as exc:
            raise BackupError(f"{path} is damaged: {exc}") from None
    if size != manifest.database_size or digest.hexdigest() != manifest.database_sha256:
        raise BackupError(
            f"{path}: checksum mismatch: the database is {size} bytes with sha256 "
            f"{digest.hexdigest()[:16]}..., the manifest says {manifest.database_size} bytes "
            f"with {manifest.database_sha256[:16]}..."
        )
    conn = sqlite3.connect(f"file:{target}?mode=ro", uri=True)
    try:
        result = [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
    except sqlite3.Error as exc:
        raise BackupError(f"{path}: the database cannot be read: {exc}") from None
    finally:
        conn.close()
    if result != ["ok"]:
        raise BackupError(f"{path}: integrity_check failed: {'; '.join(result[:3])}")
    versions, agents = _describe(target)
    if versions != manifest.schema_versions or agents != manifest.agents:
        raise BackupError(
            f"{path}: the database does not match its manifest (schema {versions}, "
            f"{agents} agents; the manifest says {manifest.schema_versions}, "
            f"{manifest.agents} agents)"
        )
    return manifest


def verify_backup(path: Path) -> Manifest:
    """Check the backup at ``path`` (see :func:`extract_verified`); its manifest."""
    with tempfile.TemporaryDirectory(prefix="caxton-verify-", dir=path.parent) as tmp:
        return extract_verified(path, Path(tmp) / DATABASE_MEMBER)


def list_backups(directory: Path) -> list[dict[str, Any]]:
    """The complete backups in ``directory``, oldest first: manifest plus ``path`` and
    ``size``; an unreadable one is listed with its ``error``."""
    found = []
    for path in sorted(directory.glob(f"backup-*{SUFFIX}")):
        entry: dict[str, Any] = {"id": path.name.removesuffix(SUFFIX), "path": str(path)}
        try:
            entry["size"] = path.stat().st_size
            entry.update(read_manifest(path).to_dict())
        except CaxtonError as exc:
            entry["error"] = str(exc)
        except OSError:
            continue
        found.append(entry)
    found.sort(key=lambda e: (e.get("created_at", 0), e["id"]))
    return found


def find_backup(reference: str, directory: Path) -> Path:
    """A backup file by path, or by id in ``directory``."""
    candidate = Path(reference).expanduser()
    if candidate.is_file():
        return candidate
    if _ID.match(reference):
        path = backup_path(directory, reference)
        if path.is_file():
            return path
        raise NotFound(f"no backup {reference} in {directory} (see `caxton backup list`)")
    raise NotFound(f"no backup file {reference}")


# -------------------------------------------------------------------------
# Restoring
# -------------------------------------------------------------------------


def store_in_use(database: Path) -> bool:
    """Whether a process has the SQLite database ``database`` open in WAL mode.

    Leaving WAL mode needs the only connection to the file, so a node serving from it
    makes the switch fail with "database is locked". (The data-directory lock, once
    the node takes one, answers this better.)
    """
    if not database.exists():
        return False
    conn = sqlite3.connect(database, isolation_level=None, timeout=0)
    try:
        mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        if mode != "wal":
            return False
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return True
        raise BackupError(f"cannot open {database}: {exc}") from None
    finally:
        conn.close()
    return False


def restore_backup(
    path: Path,
    database: Path,
    *,
    node_id: str | None,
    force: bool = False,
    data_dir: Path | None = None,
) -> RestoreResult:
    """Put the backup at ``path`` in place of ``database`` (a stopped node's store).

    Refuses a node that is running (:func:`running_node`; ``data_dir`` defaults to the
    database's directory) and a backup of another node than ``node_id`` unless
    ``force``. The replaced database (with its WAL) is kept as
    ``DATABASE.replaced-TIMESTAMP``.
    """
    data_dir = data_dir or database.parent
    private_directory(database.parent)
    holder = running_node(database, data_dir)
    if holder:
        raise Conflict(f"the node using {data_dir} is running ({holder}): stop it, then restore")
    staged = database.parent / f".restore-{os.getpid()}.db.partial"
    try:
        manifest = extract_verified(path, staged)
        if node_id and manifest.node_id != node_id and not force:
            raise Conflict(
                f"{path} is a backup of node {manifest.node_id}, not {node_id}; "
                f"restore it with --force to make this node take its place"
            )
        replaced = None
        if database.exists():
            replaced = database.with_name(
                f"{database.name}.replaced-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
            )
            os.replace(database, replaced)
            for suffix in ("-wal", "-shm"):
                side = database.with_name(database.name + suffix)
                if side.exists():
                    os.replace(side, replaced.with_name(replaced.name + suffix))
        os.replace(staged, database)
        _fsync_directory(database.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
    return RestoreResult(manifest, database, replaced)


def running_node(database: Path, data_dir: Path) -> str | None:
    """What shows that a node runs on ``data_dir`` (None: none does): the pid holding the
    data directory's lock (:func:`caxton.datadir.lock_holder`), or else ``database``
    open in another process (:func:`store_in_use`, for a process without the lock)."""
    pid = lock_holder(data_dir)
    if pid is not None:
        return f"pid {pid}" if pid else "it holds the data directory lock"
    return "its state store is open" if store_in_use(database) else None
