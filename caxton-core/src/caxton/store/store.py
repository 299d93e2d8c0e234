"""The node's embedded SQLite store, kept off the message hot path.

Every aiosqlite call is a hop to the connection's thread (about 0.3-0.5 ms for a
one-row commit on the reference machine, against some 200,000 rows/s in group
commits), so the store never writes per message:

* hot-path writes (``kv_put``, ``save_agent``, ``acknowledge``...) only update
  in-memory pending sets, coalesced by key, and wake ONE write-behind task;
* that task lingers ``flush_interval`` seconds, then commits everything pending in one
  transaction (group commit), so a burst of N writes costs one commit;
* :meth:`persist` (the durable outbox) joins the same group commit but that commit runs
  with ``synchronous=FULL`` and ``persist`` returns only once it is on disk;
* :meth:`flush` is a barrier: it returns when everything queued before it is committed.

The write-behind window (what a ``kill -9`` may lose) is therefore: KV writes, counters
and state changes queued less than ``flush_interval`` plus one commit ago. Durable
messages, and anything followed by ``await store.flush()``, are never lost. See
docs/state.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import aiosqlite

from caxton.errors import CaxtonError, ConfigError
from caxton.store.migrations import (
    CORE_MIGRATIONS,
    Migration,
    applied_versions,
    apply_migrations,
    check_sequence,
)

if TYPE_CHECKING:
    from caxton.messaging import Message

log = logging.getLogger("caxton.store")

T = TypeVar("T")

MiB = 1024 * 1024
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
JOURNAL_MODES = ("WAL", "DELETE", "TRUNCATE", "PERSIST", "MEMORY")
AGENT_COLUMNS = (
    "id",
    "name",
    "module_sha256",
    "state",
    "limits",
    "capabilities",
    "restart_policy",
    "counters",
    "last_error",
    "created_at",
    "updated_at",
    "priority",
)

#: Deletes a module unless a local agent or a replica (another node's agent kept here
#: for failover, :mod:`caxton.cluster.failover`) still refers to it.
UNUSED_MODULE_DELETE = (
    "DELETE FROM modules WHERE sha256 = ?"
    " AND NOT EXISTS (SELECT 1 FROM agents WHERE module_sha256 = ?)"
    " AND NOT EXISTS (SELECT 1 FROM agent_replicas WHERE module_sha256 = ?)"
)
MODULE_INSERT = "INSERT OR IGNORE INTO modules (sha256, size, wasm, created_at) VALUES (?, ?, ?, ?)"
AGENT_UPSERT = (
    f"INSERT OR REPLACE INTO agents ({', '.join(AGENT_COLUMNS)})"
    f" VALUES ({', '.join('?' * len(AGENT_COLUMNS))})"
)
KV_UPSERT = "INSERT OR REPLACE INTO agent_kv (agent_id, key, value) VALUES (?, ?, ?)"
OUTBOX_INSERT = (
    "INSERT OR IGNORE INTO outbox (message_id, receiver, body, created_at) VALUES (?, ?, ?, ?)"
)
DEAD_LETTER_INSERT = (
    "INSERT INTO dead_letters (message_id, receiver, reason, body, created_at)"
    " VALUES (?, ?, ?, ?, ?)"
)
CONVERSATION_UPSERT = (
    "INSERT OR REPLACE INTO conversations (id, protocol, participants, state,"
    " active, created_at, updated_at, expires_at, initiator, roles,"
    " message_count, ttl) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
REPLICA_COLUMNS = (
    "agent_id",
    "name",
    "owner",
    "generation",
    "module_sha256",
    "spec",
    "holders",
    "updated_at",
)


#: What one row can fail with (its values, not the database): such a row is left out of
#: its group commit instead of failing it. Other errors (disk full, I/O) fail the batch.
ROW_ERRORS = (
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    sqlite3.DataError,
    ValueError,  # UnicodeEncodeError: a lone surrogate in a text value
    OverflowError,  # an integer past 64 bits
    TypeError,
)


class StoreError(CaxtonError):
    """The state store failed (disk full, unreadable file, closed store)."""

    http_status = 500
    error = "State store error"


class StoredAgent(Protocol):
    """What the store needs of an agent record; serialized when its batch commits."""

    @property
    def id(self) -> str: ...

    def to_row(self) -> Mapping[str, Any]: ...


@dataclass
class _Batch:
    """Everything one group commit writes, in the order it is written."""

    agent_deletes: list[str] = field(default_factory=list)
    modules: list[tuple[str, int, bytes, float]] = field(default_factory=list)
    agents: list[tuple[Any, ...]] = field(default_factory=list)
    kv_puts: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    kv_deletes: list[tuple[str, bytes]] = field(default_factory=list)
    outbox: list[tuple[str, str, bytes, float]] = field(default_factory=list)
    acks: list[tuple[float, str]] = field(default_factory=list)
    dead_letters: list[tuple[str | None, str | None, str, bytes, float]] = field(
        default_factory=list
    )
    conversations: list[tuple[Any, ...]] = field(default_factory=list)
    conversation_deletes: list[tuple[str]] = field(default_factory=list)
    statements: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    module_deletes: list[tuple[str, str]] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    #: message id -> the waiter of the :meth:`Store.persist` call that queued it.
    outbox_waiters: dict[str, asyncio.Future[None]] = field(default_factory=dict)

    def operations(self) -> list[tuple[str, list[tuple[Any, ...]]]]:
        """The batch as ``(sql, rows)`` groups, in the order they are written."""
        ops: list[tuple[str, list[tuple[Any, ...]]]] = []
        if self.agent_deletes:
            ids = [(i,) for i in self.agent_deletes]
            ops.append(("DELETE FROM agents WHERE id = ?", ids))
            ops.append(("DELETE FROM agent_kv WHERE agent_id = ?", ids))
        if self.modules:
            ops.append((MODULE_INSERT, list(self.modules)))
        if self.agents:
            ops.append((AGENT_UPSERT, self.agents))
        if self.kv_puts:
            ops.append((KV_UPSERT, list(self.kv_puts)))
        if self.kv_deletes:
            ops.append(
                ("DELETE FROM agent_kv WHERE agent_id = ? AND key = ?", list(self.kv_deletes))
            )
        if self.outbox:
            ops.append((OUTBOX_INSERT, list(self.outbox)))
        if self.acks:
            ops.append(("UPDATE outbox SET acked_at = ? WHERE message_id = ?", list(self.acks)))
        if self.dead_letters:
            ops.append((DEAD_LETTER_INSERT, list(self.dead_letters)))
        if self.conversation_deletes:
            ops.append(("DELETE FROM conversations WHERE id = ?", list(self.conversation_deletes)))
        if self.conversations:
            ops.append((CONVERSATION_UPSERT, self.conversations))
        first = len(ops)
        for sql, params in self.statements:  # a run of one statement: one executemany
            if len(ops) > first and ops[-1][0] == sql:
                ops[-1][1].append(params)
            else:
                ops.append((sql, [params]))
        if self.module_deletes:
            ops.append((UNUSED_MODULE_DELETE, [(sha, sha, sha) for sha, _ in self.module_deletes]))
        return ops

    def rows(self) -> int:
        return (
            len(self.agent_deletes) + len(self.modules) + len(self.agents)
            + len(self.kv_puts) + len(self.kv_deletes) + len(self.outbox) + len(self.acks)
            + len(self.dead_letters) + len(self.conversations) + len(self.statements)
            + len(self.module_deletes) + len(self.conversation_deletes)
        )  # fmt: skip


@dataclass(frozen=True)
class QueuedWrite:
    """A message queued in a minority partition: ``seq`` orders the replay.

    ``message`` is None when the stored body cannot be read back (then ``problem``
    says why): the caller drops it, knowing its receiver.
    """

    seq: int
    node_id: str
    receiver: str
    message: Message | None
    problem: str = ""


class Store:
    """SQLite state of one node: agents, modules, agent KV, durable outbox, DLQ.

    Implements :class:`caxton.messaging.DurableOutbox` (``persist``, ``acknowledge``,
    ``pending``, ``seen``). Open with ``await store.open()``, close with
    ``await store.close()`` (which flushes).
    """

    def __init__(
        self,
        path: Path | str,
        *,
        synchronous: str = "NORMAL",
        journal_mode: str = "WAL",
        cache_size: int = -64_000,
        page_size: int = 4096,
        mmap_size: int = 256 * MiB,
        temp_store: str = "MEMORY",
        journal_size_limit: int = 64 * MiB,
        auto_vacuum: str = "INCREMENTAL",
        flush_interval: float = 0.005,
        outbox_retention: float = 3600.0,
        seen_limit: int = 100_000,
        node_id: str = "",
        migration_backups: Path | None = None,
    ) -> None:
        synchronous = synchronous.upper()
        journal_mode = journal_mode.upper()
        if synchronous not in SYNCHRONOUS_MODES:
            raise ConfigError(
                f"storage.synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, "
                f"not {synchronous!r}"
            )
        if journal_mode not in JOURNAL_MODES:
            raise ConfigError(
                f"journal_mode must be one of {', '.join(JOURNAL_MODES)}, not {journal_mode!r}"
            )
        self.path = Path(path)
        self.synchronous = synchronous
        self.journal_mode = journal_mode
        self.pragmas: dict[str, str | int] = {
            "page_size": page_size,
            "auto_vacuum": auto_vacuum.upper(),
            "journal_mode": journal_mode,
            "synchronous": synchronous,
            "cache_size": cache_size,
            "mmap_size": mmap_size,
            "temp_store": temp_store.upper(),
            "journal_size_limit": journal_size_limit,
            "busy_timeout": 5000,
        }
        self.flush_interval = flush_interval
        self.outbox_retention = outbox_retention
        self.seen_limit = seen_limit
        self.node_id = node_id
        #: Where a backup is written before a migration changes an existing database
        #: (None: no backup). See :mod:`caxton.backup.archive`.
        self.migration_backups = migration_backups
        self._migrations: dict[str, tuple[Migration, ...]] = {"core": CORE_MIGRATIONS}
        self._conn: aiosqlite.Connection | None = None
        self._writer: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._urgent = asyncio.Event()
        #: The database was made at this start: the node remembers nothing from before
        #: (a new node, or one whose data directory was lost).
        self.created = False
        self._closing = False
        self._clear_pending()
        #: message ids persisted or acknowledged recently (for duplicate detection).
        self._seen: OrderedDict[str, None] = OrderedDict()
        #: Commits and rows written by the write-behind task, for tests and metrics.
        self.commits = 0
        self.rows_written = 0
        #: Rows left out of their commit because they could not be stored.
        self.rows_skipped = 0

    def _clear_pending(self) -> None:
        self._p_agent_deletes: dict[str, None] = {}
        self._p_modules: dict[str, bytes] = {}
        self._p_module_deletes: dict[str, None] = {}
        self._p_agents: dict[str, StoredAgent] = {}
        self._p_kv: dict[tuple[str, bytes], bytes | None] = {}
        self._p_outbox: list[tuple[str, str, bytes, float]] = []
        self._p_acks: dict[str, float] = {}
        self._p_dead: list[tuple[str | None, str | None, str, bytes, float]] = []
        #: Conversation rows by id; None: delete it.
        self._p_conversations: dict[str, tuple[Any, ...] | None] = {}
        self._p_statements: list[tuple[str, tuple[Any, ...]]] = []
        self._p_waiters: list[asyncio.Future[None]] = []
        self._p_outbox_waiters: dict[str, asyncio.Future[None]] = {}

    @classmethod
    def from_config(cls, config: Any, data_dir: Path) -> Store:
        """Build the store from a node's :class:`caxton.config.Config`."""
        storage = config["storage"]
        coordination = config["coordination"]
        path = coordination["local_state_path"] or data_dir / "local.db"
        return cls(
            Path(path).expanduser(),
            synchronous=storage["synchronous"],
            journal_mode=coordination["journal_mode"],
            cache_size=-max(1, int(storage["page_cache_size"]) // 1024),
            mmap_size=int(storage["mmap_size"]),
            journal_size_limit=int(storage["wal_size_limit"]),
            auto_vacuum=storage["auto_vacuum"],
        )

    # -- opening and schema ------------------------------------------------------

    def register_migrations(self, namespace: str, migrations: Sequence[Migration]) -> None:
        """Add a namespace of migrations (an auth plugin's tables, say).

        Call before :meth:`open`, or call :meth:`migrate` afterwards. Versions count from
        1 in each namespace; the core schema is namespace ``core``.
        """
        if namespace in self._migrations and namespace == "core":
            raise ConfigError("the 'core' migration namespace belongs to Caxton itself")
        check_sequence(namespace, migrations)
        self._migrations[namespace] = tuple(migrations)

    async def open(self) -> None:
        if self._conn is not None:
            return
        try:
            _private_file(self.path)
            self._conn = await aiosqlite.connect(self.path, isolation_level=None)
        except Exception as exc:
            raise StoreError(f"cannot open the state store {self.path}: {exc}") from exc
        conn = self._conn
        for name, value in self.pragmas.items():
            await conn.execute(f"PRAGMA {name}={value}")
        mode = await conn.execute_fetchall("PRAGMA journal_mode")
        if str(next(iter(mode))[0]).upper() != self.journal_mode:
            log.warning("SQLite refused journal_mode=%s for %s", self.journal_mode, self.path)
        self.created = 1 in (await self.migrate()).get("core", ())
        await self._load_seen()
        self._closing = False
        self._writer = asyncio.create_task(self._write_behind(), name="caxton-store-writer")

    async def migrate(self) -> dict[str, list[int]]:
        """Apply every registered namespace's pending migrations; return what ran."""
        conn = self._connection()
        if self.migration_backups is not None:
            await self._backup_before_migrating(conn)
        applied: dict[str, list[int]] = {}
        for namespace, migrations in self._migrations.items():
            done = await apply_migrations(conn, namespace, migrations)
            if done:
                log.info("state store %s: %s schema -> v%d", self.path, namespace, done[-1])
                applied[namespace] = done
        return applied

    async def _backup_before_migrating(self, conn: aiosqlite.Connection) -> None:
        """Back up the database before a migration changes a schema it already has.

        A namespace's first migrations (a new database, a newly installed plugin) only
        add tables, so they need no backup.
        """
        from caxton.backup.archive import make_backup

        current = await applied_versions(conn)
        pending = [
            f"{namespace} v{current[namespace]} -> v{len(migrations)}"
            for namespace, migrations in self._migrations.items()
            if 0 < current.get(namespace, 0) < len(migrations)
        ]
        if not pending:
            return
        assert self.migration_backups is not None
        path, _ = await asyncio.to_thread(
            make_backup,
            self.path,
            self.migration_backups,
            node_id=self.node_id,
            note=f"before migrating {', '.join(pending)}",
        )
        log.warning("state store %s: backed up to %s before migrating", self.path, path)

    async def schema_versions(self) -> dict[str, int]:
        rows = await self._connection().execute_fetchall(
            "SELECT namespace, MAX(version) FROM schema_migrations GROUP BY namespace"
        )
        return {str(ns): int(v) for ns, v in rows}

    async def pragma(self, name: str) -> Any:
        """Read one pragma's current value (``await store.pragma("journal_mode")``)."""
        rows = list(await self._connection().execute_fetchall(f"PRAGMA {name}"))
        return rows[0][0] if rows else None

    @property
    def connection(self) -> aiosqlite.Connection:
        """The aiosqlite connection, for plugins' own reads. Write through :meth:`enqueue`."""
        return self._connection()

    def _connection(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise StoreError(f"the state store {self.path} is not open")
        return self._conn

    async def close(self) -> None:
        """Flush everything pending, stop the writer and close the file. Idempotent."""
        if self._conn is None:
            return
        self._closing = True
        self._urgent.set()
        self._wakeup.set()
        if self._writer is not None:
            await self._writer
            self._writer = None
        with contextlib.suppress(Exception):
            await self._conn.execute("PRAGMA optimize")
        await self._conn.close()
        self._conn = None

    # -- write-behind --------------------------------------------------------------

    def _touch(self) -> None:
        if self._conn is None or self._closing:
            raise StoreError(f"the state store {self.path} is closed; the write was refused")
        self._wakeup.set()

    async def flush(self) -> None:
        """Return once everything queued before this call is committed."""
        if self._conn is None:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._p_waiters.append(waiter)
        self._urgent.set()
        self._wakeup.set()
        await waiter

    def pending_rows(self) -> int:
        """Rows queued for the next group commit."""
        return (
            len(self._p_agent_deletes) + len(self._p_modules) + len(self._p_module_deletes)
            + len(self._p_agents) + len(self._p_kv) + len(self._p_outbox) + len(self._p_acks)
            + len(self._p_dead) + len(self._p_conversations) + len(self._p_statements)
        )  # fmt: skip

    async def _write_behind(self) -> None:
        while True:
            await self._wakeup.wait()
            if not self._urgent.is_set():
                # Linger so that a burst of writes shares one commit.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._urgent.wait(), self.flush_interval)
            self._wakeup.clear()
            self._urgent.clear()
            batch = self._take_batch()
            durable = [w for w in batch.waiters if not w.done()]
            try:
                failed = await self._commit(batch) if batch.rows() else []
            except Exception as exc:
                log.exception(
                    "state store %s: a group commit of %d rows failed", self.path, batch.rows()
                )
                error = StoreError(f"writing the state store {self.path} failed: {exc}")
                for waiter in durable:
                    if not waiter.done():
                        waiter.set_exception(error)
            else:
                for sql, row in failed:  # only a persist() call gets a row's failure
                    owner = batch.outbox_waiters.get(row[0]) if sql == OUTBOX_INSERT else None
                    if owner is not None and not owner.done():
                        owner.set_exception(
                            StoreError(f"message {row[0]} cannot be stored; it was not sent")
                        )
                for waiter in durable:
                    if not waiter.done():
                        waiter.set_result(None)
            if self._closing and not self.pending_rows() and not self._p_waiters:
                return

    def _take_batch(self) -> _Batch:
        now = time.time()
        batch = _Batch(
            agent_deletes=list(self._p_agent_deletes),
            modules=[(sha, len(wasm), wasm, now) for sha, wasm in self._p_modules.items()],
            agents=self._agent_rows(),
            kv_puts=[(a, k, v) for (a, k), v in self._p_kv.items() if v is not None],
            kv_deletes=[(a, k) for (a, k), v in self._p_kv.items() if v is None],
            outbox=self._p_outbox,
            acks=[(at, mid) for mid, at in self._p_acks.items()],
            dead_letters=self._p_dead,
            conversations=[row for row in self._p_conversations.values() if row is not None],
            conversation_deletes=[
                (cid,) for cid, row in self._p_conversations.items() if row is None
            ],
            statements=self._p_statements,
            module_deletes=[(sha, sha) for sha in self._p_module_deletes],
            waiters=self._p_waiters,
            outbox_waiters=self._p_outbox_waiters,
        )
        self._clear_pending()
        return batch

    def _agent_rows(self) -> list[tuple[Any, ...]]:
        rows = []
        for agent in self._p_agents.values():
            try:
                rows.append(_agent_row(agent))
            except Exception as exc:  # one record that cannot be serialized costs itself
                self.rows_skipped += 1
                log.error("state store %s: left out agent %s: %s", self.path, agent.id, exc)
        return rows

    async def _commit(self, batch: _Batch) -> list[tuple[str, tuple[Any, ...]]]:
        """Commit ``batch`` in one transaction; return the rows left out (see
        :func:`_write_isolating`, tried when a row's values fail the whole batch).

        The whole transaction runs in ONE call on the connection's thread: an aiosqlite
        call is a hop there and back (a wake-up of that thread and one of the loop), and
        a statement per hop made a quorum turn's commit (BEGIN, the key/value rows, a
        fence row per agent, COMMIT) a dozen hops, each a scheduling slot on a busy
        machine."""
        conn = self._connection()
        # Acknowledged durable messages must survive power loss: FULL syncs the WAL on
        # this commit (NORMAL lost acknowledged commits under simulated power loss).
        durable = bool(batch.outbox) and self.synchronous in {"OFF", "NORMAL"}
        failed = await _in_thread(
            conn,
            _group_commit,
            batch.operations(),
            self.synchronous if durable else None,
            str(self.path),
        )
        self.commits += 1
        self.rows_written += batch.rows() - len(failed)
        self.rows_skipped += len(failed)
        return failed

    def enqueue(self, sql: str, params: Iterable[Any] = ()) -> None:
        """Queue one statement for the next group commit (plugins' own tables)."""
        self._touch()
        self._p_statements.append((sql, tuple(params)))

    # -- modules -------------------------------------------------------------------

    def put_module(self, sha256: str, wasm: bytes) -> None:
        """Store a module's bytes once, keyed by their sha256 (write-behind)."""
        self._touch()
        self._p_module_deletes.pop(sha256, None)
        self._p_modules[sha256] = wasm

    def delete_module(self, sha256: str) -> None:
        """Drop a module's bytes unless an agent still refers to it (write-behind)."""
        self._touch()
        self._p_modules.pop(sha256, None)
        self._p_module_deletes[sha256] = None

    async def load_module(self, sha256: str) -> bytes | None:
        pending = self._p_modules.get(sha256)
        if pending is not None:
            return pending
        rows = list(
            await self._connection().execute_fetchall(
                "SELECT wasm FROM modules WHERE sha256 = ?", (sha256,)
            )
        )
        return bytes(rows[0][0]) if rows else None

    async def module_count(self) -> int:
        await self.flush()
        rows = list(await self._connection().execute_fetchall("SELECT COUNT(*) FROM modules"))
        return int(rows[0][0])

    # -- replicas of other nodes' agents (caxton.cluster.failover) -------------------

    def put_replica(self, record: Mapping[str, Any], wasm: bytes | None = None) -> None:
        """Keep (or update) a replica: ``record`` has :data:`REPLICA_COLUMNS` but
        ``updated_at`` (``spec`` and ``holders`` as JSON-able values). ``wasm``: the
        module's bytes, stored once by sha256; None when this store already has them."""
        self._touch()
        if wasm is not None:
            self._p_statements.append(
                (
                    "INSERT OR IGNORE INTO modules (sha256, size, wasm, created_at)"
                    " VALUES (?, ?, ?, ?)",
                    (record["module_sha256"], len(wasm), wasm, time.time()),
                )
            )
        values = {
            **record,
            "spec": json.dumps(record["spec"], sort_keys=True),
            "holders": json.dumps(list(record["holders"])),
            "updated_at": time.time(),
        }
        self._p_statements.append(
            (
                f"INSERT OR REPLACE INTO agent_replicas ({', '.join(REPLICA_COLUMNS)})"
                f" VALUES ({', '.join('?' * len(REPLICA_COLUMNS))})",
                tuple(values[column] for column in REPLICA_COLUMNS),
            )
        )

    def delete_replica(self, agent_id: str, module_sha256: str) -> None:
        """Drop a replica, and its module unless something else still uses it."""
        self._touch()
        self._p_statements.append(("DELETE FROM agent_replicas WHERE agent_id = ?", (agent_id,)))
        self._p_statements.append(
            (UNUSED_MODULE_DELETE, (module_sha256, module_sha256, module_sha256))
        )

    async def load_replicas(self) -> list[dict[str, Any]]:
        """Every replica kept here (committed, after flushing what is queued)."""
        await self.flush()
        rows = await self._connection().execute_fetchall(
            f"SELECT {', '.join(REPLICA_COLUMNS)} FROM agent_replicas ORDER BY name"
        )
        records = []
        for row in rows:
            record = dict(zip(REPLICA_COLUMNS, row, strict=True))
            record["spec"] = json.loads(record["spec"])
            record["holders"] = json.loads(record["holders"])
            records.append(record)
        return records

    async def has_module(self, sha256: str) -> bool:
        """Whether the module ``sha256`` is stored (or queued to be)."""
        if sha256 in self._p_modules:
            return True
        await self.flush()
        rows = await self._connection().execute_fetchall(
            "SELECT 1 FROM modules WHERE sha256 = ?", (sha256,)
        )
        return bool(list(rows))

    def put_placement(self, agent_id: str, name: str, generation: int) -> None:
        """Record the placement generation of an agent hosted here."""
        self._touch()
        self._p_statements.append(
            (
                "INSERT OR REPLACE INTO agent_placements (agent_id, name, generation)"
                " VALUES (?, ?, ?)",
                (agent_id, name, generation),
            )
        )

    def delete_placement(self, agent_id: str) -> None:
        self._touch()
        self._p_statements.append(("DELETE FROM agent_placements WHERE agent_id = ?", (agent_id,)))

    async def load_placements(self) -> dict[str, int]:
        """agent id -> placement generation, for the agents hosted here."""
        await self.flush()
        rows = await self._connection().execute_fetchall(
            "SELECT agent_id, generation FROM agent_placements"
        )
        return {str(agent_id): int(generation) for agent_id, generation in rows}

    # -- agents --------------------------------------------------------------------

    def save_agent(self, agent: StoredAgent) -> None:
        """Queue the agent's record; it is serialized when its batch commits."""
        self._touch()
        self._p_agents[agent.id] = agent

    def delete_agent(self, agent_id: str) -> None:
        """Queue the removal of an agent's record and its whole KV namespace."""
        self._touch()
        self._p_agents.pop(agent_id, None)
        for key in [k for k in self._p_kv if k[0] == agent_id]:
            del self._p_kv[key]
        self._p_agent_deletes[agent_id] = None

    def delete_agent_record(self, agent_id: str) -> None:
        """Queue the removal of an agent's record only: its KV rows stay (a moved
        agent's old node may hold them as a replica of the new owner's)."""
        self._touch()
        self._p_agents.pop(agent_id, None)
        self._p_statements.append(("DELETE FROM agents WHERE id = ?", (agent_id,)))

    async def load_agents(self) -> list[dict[str, Any]]:
        """Every stored agent record (committed, after flushing what is queued)."""
        await self.flush()
        conn = self._connection()
        rows = await conn.execute_fetchall(
            f"SELECT {', '.join(AGENT_COLUMNS)} FROM agents ORDER BY created_at, name"
        )
        records = []
        for row in rows:
            record = dict(zip(AGENT_COLUMNS, row, strict=True))
            for column in ("limits", "capabilities", "restart_policy", "counters"):
                record[column] = json.loads(record[column] or "{}")
            records.append(record)
        return records

    # -- agent key/value -----------------------------------------------------------

    def kv_put(self, agent_id: str, key: bytes, value: bytes) -> None:
        self._touch()
        self._p_kv[(agent_id, key)] = value

    def kv_delete(self, agent_id: str, key: bytes) -> None:
        self._touch()
        self._p_kv[(agent_id, key)] = None

    async def load_kv(self, agent_id: str) -> dict[bytes, bytes]:
        await self.flush()
        rows = await self._connection().execute_fetchall(
            "SELECT key, value FROM agent_kv WHERE agent_id = ?", (agent_id,)
        )
        return {bytes(k): bytes(v) for k, v in rows}

    async def load_all_kv(self) -> dict[str, dict[bytes, bytes]]:
        """Every agent's KV namespace in one query (used when a node starts)."""
        await self.flush()
        rows = await self._connection().execute_fetchall(
            "SELECT agent_id, key, value FROM agent_kv"
        )
        namespaces: dict[str, dict[bytes, bytes]] = {}
        for agent_id, key, value in rows:
            namespaces.setdefault(str(agent_id), {})[bytes(key)] = bytes(value)
        return namespaces

    # -- durable outbox (caxton.messaging.DurableOutbox) ----------------------------

    async def persist(self, messages: Sequence[Message]) -> None:
        """Commit ``messages`` with ``synchronous=FULL``; return once on disk."""
        if not messages:
            return
        self._touch()
        now = time.time()
        for message in messages:
            self._p_outbox.append(
                (message.message_id, str(message.receiver), message.to_json(), now)
            )
            self._remember(message.message_id)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._p_waiters.append(waiter)
        for message in messages:
            self._p_outbox_waiters[message.message_id] = waiter
        self._urgent.set()
        await waiter

    async def acknowledge(self, message_ids: Sequence[str]) -> None:
        """Mark messages delivered (write-behind: a crash may redeliver them once)."""
        self._touch()
        now = time.time()
        for message_id in message_ids:
            self._p_acks[message_id] = now
            self._remember(message_id)

    async def pending(self) -> list[Message]:
        """Persisted messages not acknowledged yet, oldest first."""
        from caxton.messaging import Message

        await self.flush()
        rows = await self._connection().execute_fetchall(
            "SELECT message_id, body FROM outbox WHERE acked_at IS NULL ORDER BY created_at, rowid"
        )
        messages = []
        for message_id, body in rows:
            try:
                messages.append(Message.from_json(bytes(body)))
            except CaxtonError as exc:
                log.error("dropping unreadable durable message %s: %s", message_id, exc)
        return messages

    def seen(self, message_id: str) -> bool:
        """Whether ``message_id`` was persisted or acknowledged within the retention."""
        return message_id in self._seen

    def _remember(self, message_id: str) -> None:
        seen = self._seen
        seen[message_id] = None
        if len(seen) > self.seen_limit:
            seen.popitem(last=False)  # O(1), unlike deleting a plain dict's first key

    async def _load_seen(self) -> None:
        conn = self._connection()
        await conn.execute(
            "DELETE FROM outbox WHERE acked_at IS NOT NULL AND acked_at < ?",
            (time.time() - self.outbox_retention,),
        )
        rows = await conn.execute_fetchall(
            "SELECT message_id FROM outbox ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (self.seen_limit,),
        )
        self._seen = OrderedDict((str(row[0]), None) for row in reversed(list(rows)))

    # -- dead letters and conversations ---------------------------------------------

    def add_dead_letter(self, message: Message, reason: str) -> None:
        """Keep a message that could not be delivered (write-behind)."""
        self._touch()
        self._p_dead.append(
            (message.message_id, str(message.receiver), reason, message.to_json(), time.time())
        )

    async def dead_letters(
        self, limit: int = 100, *, message_id: str | None = None, receiver: str | None = None
    ) -> list[dict[str, Any]]:
        """The newest dead letters first: ``message_id, receiver, reason, message, at``
        (only those of ``message_id``, or to ``receiver``, when given)."""
        await self.flush()
        given = {"message_id": message_id, "receiver": receiver}
        tests = [f"{column} = ?" for column, value in given.items() if value]
        where = f"WHERE {' AND '.join(tests)} " if tests else ""
        args = tuple(value for value in given.values() if value)
        rows = await self._connection().execute_fetchall(
            "SELECT message_id, receiver, reason, body, created_at FROM dead_letters "
            f"{where}ORDER BY id DESC LIMIT ?",
            (*args, limit),
        )
        return [
            {
                "message_id": mid,
                "receiver": receiver,
                "reason": reason,
                "message": json.loads(bytes(body)),
                "at": at,
            }
            for mid, receiver, reason, body, at in rows
        ]

    # -- writes queued in a minority partition (caxton.cluster.partition) ------------

    async def queue_write(self, message: Message, node_id: str) -> None:
        """Keep ``message`` for ``node_id`` (out of reach); return once committed.

        Needs the ``cluster`` schema (:data:`~caxton.store.migrations.CLUSTER_MIGRATIONS`).
        """
        self.enqueue(
            "INSERT OR IGNORE INTO queued_writes (message_id, receiver, node_id, body,"
            " queued_at) VALUES (?, ?, ?, ?, ?)",
            (message.message_id, str(message.receiver), node_id, message.to_json(), time.time()),
        )
        await self.flush()

    async def queued_writes(self, limit: int = 1000, *, after: int = 0) -> list[QueuedWrite]:
        """Queued messages in the order they were queued, from sequence ``after`` on."""
        from caxton.messaging import Message

        await self.flush()
        rows = await self._connection().execute_fetchall(
            "SELECT seq, node_id, receiver, body FROM queued_writes WHERE seq > ?"
            " ORDER BY seq LIMIT ?",
            (after, limit),
        )
        queued = []
        for seq, node_id, receiver, body in rows:
            try:
                message: Message | None = Message.from_json(bytes(body))
                problem = ""
            except CaxtonError as exc:
                message, problem = None, str(exc)
            queued.append(QueuedWrite(int(seq), str(node_id), str(receiver), message, problem))
        return queued

    def unqueue_write(self, seq: int) -> None:
        """Forget a queued message once delivered (write-behind)."""
        self.enqueue("DELETE FROM queued_writes WHERE seq = ?", (seq,))

    async def queued_write_counts(self) -> dict[str, int]:
        """How many messages are queued for each receiver."""
        await self.flush()
        rows = await self._connection().execute_fetchall(
            "SELECT receiver, COUNT(*) FROM queued_writes GROUP BY receiver"
        )
        return {str(receiver): int(count) for receiver, count in rows}

    def save_conversations(self, conversations: Sequence[Mapping[str, Any]]) -> None:
        """Record conversations' latest state (write-behind, coalesced by id).

        Each is a :meth:`caxton.messaging.Conversation.to_dict`; a finished one is kept
        inactive until the router forgets it.
        """
        self._touch()
        for data in conversations:
            cid = data["conversation_id"]
            self._p_conversations[cid] = (
                cid,
                data["protocol"],
                json.dumps(list(data["participants"])),
                data["state"],
                int(bool(data.get("active", True))),
                data["started_at"],
                data["updated_at"],
                data["updated_at"] + data["ttl"],
                data["initiator"],
                json.dumps(dict(data["roles"])),
                int(data["message_count"]),
                data["ttl"],
            )

    def forget_conversations(self, conversation_ids: Sequence[str]) -> None:
        """Drop conversations (write-behind)."""
        self._touch()
        for cid in conversation_ids:
            self._p_conversations[cid] = None

    async def load_conversations(self, *, active_only: bool = False) -> list[dict[str, Any]]:
        """Kept conversations, oldest first, in :meth:`save_conversations`' shape."""
        await self.flush()
        sql = (
            "SELECT id, protocol, participants, state, active, created_at, updated_at,"
            " initiator, roles, message_count, ttl FROM conversations"
        )
        if active_only:
            sql += " WHERE active = 1"
        rows = await self._connection().execute_fetchall(sql + " ORDER BY created_at")
        return [
            {
                "conversation_id": cid,
                "protocol": protocol,
                "participants": json.loads(participants),
                "state": state,
                "active": bool(active),
                "started_at": started,
                "updated_at": updated,
                "initiator": initiator,
                "roles": json.loads(roles),
                "message_count": count,
                "ttl": ttl,
            }
            for (
                cid, protocol, participants, state, active, started, updated,
                initiator, roles, count, ttl,
            ) in rows
        ]  # fmt: skip


def _private_file(path: Path) -> None:
    """Create ``path`` (and its directory, 0700) readable by its owner only (0600), or
    narrow an existing one: the store holds API-key hashes. SQLite gives its -wal and
    -shm files the mode of the database file."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _agent_row(agent: StoredAgent) -> tuple[Any, ...]:
    row = dict(agent.to_row())
    for column in ("limits", "capabilities", "restart_policy", "counters"):
        if not isinstance(row.get(column), str):
            row[column] = json.dumps(row.get(column) or {}, sort_keys=True)
    return tuple(row.get(column) for column in AGENT_COLUMNS)


async def _in_thread(conn: aiosqlite.Connection, function: Callable[..., T], *args: Any) -> T:
    """``function(the sqlite3 connection, *args)`` on ``conn``'s own thread, in one hop.

    aiosqlite's public calls are one statement each; its ``_execute`` (queue a callable
    for the connection's thread, await its result) is what they are built on, and has
    been since its first releases."""
    execute = cast("Callable[..., Awaitable[T]]", conn._execute)
    return await execute(function, conn._conn, *args)


def _group_commit(
    db: sqlite3.Connection,
    operations: list[tuple[str, list[tuple[Any, ...]]]],
    durable_after: str | None,
    path: str,
) -> list[tuple[str, tuple[Any, ...]]]:
    """On the connection's thread: write ``operations`` in one transaction; return the
    rows left out (none, unless a row's values failed the batch: then
    :func:`_write_isolating`). ``durable_after``: run it with ``synchronous=FULL`` and
    set this mode again after."""
    if durable_after is not None:
        db.execute("PRAGMA synchronous=FULL")
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            for sql, rows in operations:
                if len(rows) == 1:
                    db.execute(sql, rows[0])
                else:
                    db.executemany(sql, rows)
        except ROW_ERRORS:
            db.execute("ROLLBACK")
            return _write_isolating(db, operations, path)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return []
    finally:
        if durable_after is not None:
            db.execute(f"PRAGMA synchronous={durable_after}")


def _write_isolating(
    db: sqlite3.Connection, operations: list[tuple[str, list[tuple[Any, ...]]]], path: str
) -> list[tuple[str, tuple[Any, ...]]]:
    """Commit ``operations`` leaving out the rows that cannot be written; return those.

    Each group of rows runs under a savepoint; a group that fails is retried row by
    row, so one bad row (text UTF-8 cannot encode, an integer SQLite cannot hold)
    costs only itself. Each left-out row is logged once.
    """
    failed: list[tuple[str, tuple[Any, ...]]] = []
    db.execute("BEGIN IMMEDIATE")
    try:
        for sql, rows in operations:
            db.execute("SAVEPOINT caxton_group")
            try:
                db.executemany(sql, rows)
            except ROW_ERRORS:
                db.execute("ROLLBACK TO caxton_group")
                for row in rows:
                    db.execute("SAVEPOINT caxton_row")
                    try:
                        db.execute(sql, row)
                    except ROW_ERRORS as exc:
                        db.execute("ROLLBACK TO caxton_row")
                        failed.append((sql, row))
                        log.error(
                            "state store %s: left out a row that cannot be stored (%s): %s",
                            path,
                            sql.split("(")[0].strip(),
                            exc,
                        )
                    db.execute("RELEASE caxton_row")
            db.execute("RELEASE caxton_group")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return failed
