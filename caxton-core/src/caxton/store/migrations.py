"""Versioned schema migrations, per namespace.

Core owns the ``core`` namespace; any other module or plugin registers its own
(``store.register_migrations("auth", [...])``) and gets its own version sequence in the
same ``schema_migrations`` table. Each migration is SQL or an async function of the
connection, and runs in one transaction together with the row that records it, so a
crash half-way leaves the schema at the previous version.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiosqlite

from caxton.errors import ConfigError

MigrationStep = str | Callable[[aiosqlite.Connection], Awaitable[None]]

MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    namespace   TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    description TEXT    NOT NULL,
    applied_at  REAL    NOT NULL,
    PRIMARY KEY (namespace, version)
)
"""


@dataclass(frozen=True)
class Migration:
    """One step of a namespace's schema: ``version`` counts up from 1 without gaps."""

    version: int
    description: str
    step: MigrationStep


def check_sequence(namespace: str, migrations: Sequence[Migration]) -> None:
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ConfigError(
            f"migrations of namespace {namespace!r} must be numbered 1, 2, 3... without "
            f"gaps; got {versions}"
        )


async def applied_versions(conn: aiosqlite.Connection) -> dict[str, int]:
    """The highest applied version of every namespace."""
    await conn.execute(MIGRATIONS_TABLE)
    rows = await conn.execute_fetchall(
        "SELECT namespace, MAX(version) FROM schema_migrations GROUP BY namespace"
    )
    return {str(namespace): int(version) for namespace, version in rows}


async def apply_migrations(
    conn: aiosqlite.Connection, namespace: str, migrations: Sequence[Migration]
) -> list[int]:
    """Apply the migrations of ``namespace`` newer than the database; return their versions.

    ``conn`` must be in autocommit mode (``isolation_level=None``): each step gets its
    own ``BEGIN IMMEDIATE`` ... ``COMMIT``.
    """
    check_sequence(namespace, migrations)
    current = (await applied_versions(conn)).get(namespace, 0)
    if current > len(migrations):
        raise ConfigError(
            f"the state store's {namespace!r} schema is at version {current}, newer than "
            f"this Caxton knows ({len(migrations)}): upgrade Caxton or use another data_dir"
        )
    done: list[int] = []
    for migration in migrations[current:]:
        await conn.execute("BEGIN IMMEDIATE")
        try:
            if isinstance(migration.step, str):
                for statement in split_statements(migration.step):
                    await conn.execute(statement)
            else:
                await migration.step(conn)
            await conn.execute(
                "INSERT INTO schema_migrations (namespace, version, description, applied_at)"
                " VALUES (?, ?, ?, ?)",
                (namespace, migration.version, migration.description, time.time()),
            )
        except BaseException:
            await conn.execute("ROLLBACK")
            raise
        await conn.execute("COMMIT")
        done.append(migration.version)
    return done


def split_statements(script: str) -> list[str]:
    """Split a migration script into complete statements (``executescript`` would commit)."""
    import sqlite3

    statements: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            if pending.strip():
                statements.append(pending.strip())
            pending = ""
    if pending.strip():
        statements.append(pending.strip())
    return statements


# -------------------------------------------------------------------------
# Core schema
# -------------------------------------------------------------------------

V1_INITIAL = """
CREATE TABLE modules (
    sha256     TEXT PRIMARY KEY,
    size       INTEGER NOT NULL,
    wasm       BLOB    NOT NULL,
    created_at REAL    NOT NULL
);
CREATE TABLE agents (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    module_sha256 TEXT NOT NULL,
    state         TEXT NOT NULL,
    limits        TEXT NOT NULL,
    capabilities  TEXT NOT NULL,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL
);
CREATE INDEX idx_agents_state ON agents(state);
CREATE TABLE agent_kv (
    agent_id TEXT NOT NULL,
    key      BLOB NOT NULL,
    value    BLOB NOT NULL,
    PRIMARY KEY (agent_id, key)
) WITHOUT ROWID;
CREATE TABLE outbox (
    message_id TEXT PRIMARY KEY,
    receiver   TEXT NOT NULL,
    body       BLOB NOT NULL,
    created_at REAL NOT NULL,
    acked_at   REAL
);
CREATE INDEX idx_outbox_pending ON outbox(created_at) WHERE acked_at IS NULL;
"""

V2_CONVERSATIONS_DLQ_COUNTERS = """
ALTER TABLE agents ADD COLUMN restart_policy TEXT NOT NULL DEFAULT '{}';
ALTER TABLE agents ADD COLUMN counters TEXT NOT NULL DEFAULT '{}';
ALTER TABLE agents ADD COLUMN last_error TEXT;
CREATE TABLE conversations (
    id           TEXT PRIMARY KEY,
    protocol     TEXT,
    participants TEXT NOT NULL,
    state        TEXT NOT NULL,
    active       INTEGER NOT NULL DEFAULT 1,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    expires_at   REAL
);
CREATE INDEX idx_conversations_active ON conversations(active) WHERE active = 1;
CREATE TABLE dead_letters (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT,
    receiver   TEXT,
    reason     TEXT NOT NULL,
    body       BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX idx_dead_letters_created ON dead_letters(created_at);
"""

V3_CLUSTER_REPLICAS = """
CREATE TABLE agent_replicas (
    agent_id      TEXT PRIMARY KEY,
    name          TEXT    NOT NULL,
    owner         TEXT    NOT NULL,
    generation    INTEGER NOT NULL,
    module_sha256 TEXT    NOT NULL,
    spec          TEXT    NOT NULL,
    holders       TEXT    NOT NULL,
    updated_at    REAL    NOT NULL
);
CREATE INDEX idx_agent_replicas_module ON agent_replicas(module_sha256);
CREATE TABLE agent_placements (
    agent_id   TEXT PRIMARY KEY,
    name       TEXT    NOT NULL,
    generation INTEGER NOT NULL
);
"""

V4_CONVERSATION_DETAILS = """
ALTER TABLE conversations ADD COLUMN initiator TEXT NOT NULL DEFAULT '';
ALTER TABLE conversations ADD COLUMN roles TEXT NOT NULL DEFAULT '{}';
ALTER TABLE conversations ADD COLUMN message_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN ttl REAL NOT NULL DEFAULT 3600;
"""

V5_DEAD_LETTERS_BY_MESSAGE = """
CREATE INDEX idx_dead_letters_message ON dead_letters(message_id);
"""

CORE_MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "modules, agents, agent key/value store, durable outbox", V1_INITIAL),
    Migration(
        2,
        "conversations, dead letters, agent restart policy and counters",
        V2_CONVERSATIONS_DLQ_COUNTERS,
    ),
    Migration(
        3,
        "cluster failover: replicas of other nodes' agents, placement generations",
        V3_CLUSTER_REPLICAS,
    ),
    Migration(
        4,
        "conversations kept across restarts: initiator, protocol roles, counts, ttl",
        V4_CONVERSATION_DETAILS,
    ),
    Migration(
        5,
        "dead letters looked up by message id (what became of an accepted message)",
        V5_DEAD_LETTERS_BY_MESSAGE,
    ),
    Migration(
        6,
        "agent priority class (suspended or shed first in an emergency)",
        "ALTER TABLE agents ADD COLUMN priority TEXT NOT NULL DEFAULT 'normal'",
    ),
)


# -------------------------------------------------------------------------
# The cluster's schema (registered by caxton.cluster.partition when a node clusters)
# -------------------------------------------------------------------------

CLUSTER_NAMESPACE = "cluster"

V1_QUEUED_WRITES = """
CREATE TABLE queued_writes (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT    NOT NULL UNIQUE,
    receiver   TEXT    NOT NULL,
    node_id    TEXT    NOT NULL,
    body       BLOB    NOT NULL,
    queued_at  REAL    NOT NULL
);
"""

V2_AGENT_FENCES = """
CREATE TABLE agent_fences (
    agent_id   TEXT    PRIMARY KEY,
    promised   INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    version    INTEGER NOT NULL
);
"""

V3_FENCE_CONFIGS = """
ALTER TABLE agent_fences ADD COLUMN members TEXT NOT NULL DEFAULT '[]';
ALTER TABLE agent_fences ADD COLUMN proposals TEXT NOT NULL DEFAULT '[]';
"""

CLUSTER_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1, "messages queued in a minority partition, replayed when it heals", V1_QUEUED_WRITES
    ),
    Migration(
        2,
        "fenced ownership: each agent's promised generation and the state version kept here",
        V2_AGENT_FENCES,
    ),
    Migration(
        3,
        "fenced ownership: the replica set of each generation, and the sets proposed with "
        "each promise (a takeover finds the current replica set from them)",
        V3_FENCE_CONFIGS,
    ),
)
