"""The SQLite state store: pragmas, migrations, write-behind group commit, crash safety."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from caxton.errors import ConfigError
from caxton.store import CORE_MIGRATIONS, Migration, Store, StoreError, apply_migrations


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(tmp_path / "local.db")
    await store.open()
    yield store
    await store.close()


class Record:
    """A minimal StoredAgent."""

    def __init__(self, agent_id: str, name: str, state: str = "running") -> None:
        self.id = agent_id
        self.name = name
        self.state = state

    def to_row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "module_sha256": "ab" * 32,
            "state": self.state,
            "limits": {"max_fuel": 5},
            "capabilities": {},
            "restart_policy": {"policy": "never"},
            "counters": {"crashes": 1},
            "last_error": None,
            "created_at": 1.0,
            "updated_at": 2.0,
        }


async def test_pragmas_of_the_performance_guide(store: Store) -> None:
    assert (await store.pragma("journal_mode")).lower() == "wal"
    assert await store.pragma("synchronous") == 1  # NORMAL
    assert await store.pragma("cache_size") == -64000
    assert await store.pragma("page_size") == 4096
    assert await store.pragma("mmap_size") == 256 * 1024 * 1024
    assert await store.pragma("temp_store") == 2  # MEMORY


def test_invalid_pragma_values_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="synchronous must be one of"):
        Store(tmp_path / "x.db", synchronous="SOMETIMES")
    with pytest.raises(ConfigError, match="journal_mode"):
        Store(tmp_path / "x.db", journal_mode="WALRUS")


async def test_schema_is_at_the_latest_core_version(store: Store) -> None:
    assert (await store.schema_versions())["core"] == len(CORE_MIGRATIONS)


async def test_upgrade_from_v1_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        assert await apply_migrations(conn, "core", CORE_MIGRATIONS[:1]) == [1]
        await conn.execute(
            "INSERT INTO agents (id, name, module_sha256, state, limits, capabilities,"
            " created_at, updated_at) VALUES ('a1', 'old-agent', 'ff', 'stopped', '{}', '{}',"
            " 1, 1)"
        )
        await conn.execute("INSERT INTO agent_kv VALUES ('a1', x'6b', x'76')")
    store = Store(path)
    await store.open()
    try:
        assert (await store.schema_versions())["core"] == len(CORE_MIGRATIONS)
        [row] = await store.load_agents()
        assert row["name"] == "old-agent"
        assert row["counters"] == {}
        assert row["last_error"] is None
        assert await store.load_kv("a1") == {b"k": b"v"}
        assert await store.dead_letters() == []
    finally:
        await store.close()


async def test_newer_schema_than_known_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE schema_migrations (namespace TEXT, version INTEGER,"
            " description TEXT, applied_at REAL, PRIMARY KEY (namespace, version))"
        )
        conn.execute("INSERT INTO schema_migrations VALUES ('core', 99, 'from the future', 0)")
    store = Store(path)
    with pytest.raises(ConfigError, match="version 99, newer than this Caxton knows"):
        await store.open()
    await store.close()


async def test_other_modules_register_their_own_migrations(tmp_path: Path) -> None:
    async def add_column(conn: aiosqlite.Connection) -> None:
        await conn.execute("ALTER TABLE api_keys ADD COLUMN role TEXT DEFAULT 'reader'")

    v1 = Migration(1, "api keys", "CREATE TABLE api_keys (id TEXT PRIMARY KEY, hash TEXT);")
    store = Store(tmp_path / "local.db")
    store.register_migrations("auth", [v1])
    await store.open()
    store.enqueue("INSERT INTO api_keys (id, hash) VALUES (?, ?)", ("k1", "h"))
    await store.flush()
    store.register_migrations("auth", [v1, Migration(2, "roles", add_column)])
    assert await store.migrate() == {"auth": [2]}
    rows = await store.connection.execute_fetchall("SELECT id, role FROM api_keys")
    assert list(rows) == [("k1", "reader")]
    assert await store.schema_versions() == {"core": len(CORE_MIGRATIONS), "auth": 2}
    await store.close()


def test_migration_numbering_must_be_contiguous(tmp_path: Path) -> None:
    store = Store(tmp_path / "local.db")
    with pytest.raises(ConfigError, match="without gaps"):
        store.register_migrations("x", [Migration(2, "two", "SELECT 1;")])
    with pytest.raises(ConfigError, match="belongs to Caxton"):
        store.register_migrations("core", [Migration(1, "one", "SELECT 1;")])


async def test_failed_migration_rolls_back(tmp_path: Path) -> None:
    store = Store(tmp_path / "local.db")
    store.register_migrations(
        "broken",
        [Migration(1, "half", "CREATE TABLE half (x INTEGER);\nINSERT INTO nowhere VALUES (1);")],
    )
    with pytest.raises(sqlite3.OperationalError, match="nowhere"):
        await store.open()
    tables = await store.connection.execute_fetchall(
        "SELECT name FROM sqlite_master WHERE name = 'half'"
    )
    assert list(tables) == []
    assert "broken" not in await store.schema_versions()
    await store.close()


async def test_writes_are_group_committed(store: Store) -> None:
    commits = store.commits
    for i in range(1000):
        store.kv_put("agent", f"k{i}".encode(), b"v" * 10)
    await store.flush()
    assert store.commits - commits == 1
    assert len(await store.load_kv("agent")) == 1000


async def test_a_group_commit_is_one_call_on_the_connection_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BEGIN, every row and COMMIT in one hop to aiosqlite's thread (not one per
    statement: each hop is a wake-up of that thread and of the loop); a run of one
    statement is one executemany, and statements keep their order."""
    table = Migration(1, "marks", "CREATE TABLE marks (id INTEGER PRIMARY KEY, v TEXT);")
    store = Store(tmp_path / "local.db")
    store.register_migrations("marks", [table])
    await store.open()
    try:
        conn = store.connection
        hops: list[Any] = []
        execute = conn._execute

        async def counted(fn: Any, *args: Any, **kwargs: Any) -> Any:
            hops.append(fn)
            return await execute(fn, *args, **kwargs)

        monkeypatch.setattr(conn, "_execute", counted)
        upsert = "INSERT OR REPLACE INTO marks (id, v) VALUES (?, ?)"
        for i in range(5):
            store.kv_put(f"agent{i}", b"k", b"v")
            store.enqueue(upsert, (i, "first"))
        store.enqueue("DELETE FROM marks WHERE id = ?", (1,))
        store.enqueue(upsert, (2, "second"))
        await store.flush()
        assert len(hops) == 1
        monkeypatch.undo()
        rows = await conn.execute_fetchall("SELECT id, v FROM marks ORDER BY id")
        assert list(rows) == [(0, "first"), (2, "second"), (3, "first"), (4, "first")]
        assert len(await store.load_all_kv()) == 5
    finally:
        await store.close()


async def test_kv_writes_coalesce_by_key(store: Store) -> None:
    for i in range(100):
        store.kv_put("a", b"counter", str(i).encode())
    store.kv_put("a", b"gone", b"x")
    store.kv_delete("a", b"gone")
    assert store.pending_rows() == 2
    await store.flush()
    assert await store.load_kv("a") == {b"counter": b"99"}


async def test_write_behind_commits_without_flush(store: Store) -> None:
    store.kv_put("a", b"k", b"v")
    for _ in range(200):
        if store.pending_rows() == 0 and store.commits:
            break
        await asyncio.sleep(0.01)
    rows = await store.connection.execute_fetchall("SELECT value FROM agent_kv")
    assert list(rows) == [(b"v",)]


async def test_modules_are_stored_once_and_collected(store: Store) -> None:
    store.put_module("aa", b"\0asm-one")
    store.put_module("aa", b"\0asm-one")
    store.save_agent(Record("id1", "one"))
    await store.flush()
    assert await store.module_count() == 1
    store.put_module("aa", b"\0asm-one")  # a second deploy of the same bytes
    await store.flush()
    assert await store.module_count() == 1
    assert await store.load_module("aa") == b"\0asm-one"


async def test_module_in_use_is_not_deleted(store: Store) -> None:
    record = Record("id1", "one")
    row = record.to_row()
    store.put_module(row["module_sha256"], b"wasm")
    store.save_agent(record)
    store.delete_module(row["module_sha256"])
    await store.flush()
    assert await store.load_module(row["module_sha256"]) is None  # pending put was dropped
    store.put_module(row["module_sha256"], b"wasm")
    await store.flush()
    store.delete_module(row["module_sha256"])
    await store.flush()
    assert await store.load_module(row["module_sha256"]) == b"wasm"  # still referenced


async def test_agent_rows_round_trip_and_delete_drops_kv(store: Store) -> None:
    store.save_agent(Record("id1", "one"))
    store.save_agent(Record("id2", "two", state="stopped"))
    store.kv_put("id1", b"k", b"v")
    store.kv_put("id2", b"k", b"v")
    await store.flush()
    rows = {r["id"]: r for r in await store.load_agents()}
    assert rows["id1"]["limits"] == {"max_fuel": 5}
    assert rows["id2"]["state"] == "stopped"
    store.kv_put("id1", b"late", b"v")
    store.delete_agent("id1")
    await store.flush()
    assert [r["id"] for r in await store.load_agents()] == ["id2"]
    assert await store.load_kv("id1") == {}
    assert await store.load_all_kv() == {"id2": {b"k": b"v"}}


async def test_agent_record_is_serialized_at_commit_time(store: Store) -> None:
    record = Record("id1", "one", state="loaded")
    store.save_agent(record)
    record.state = "running"  # changed after queuing, before the commit
    await store.flush()
    [row] = await store.load_agents()
    assert row["state"] == "running"


def _conversation(cid: str, state: str, **changes: Any) -> dict[str, Any]:
    return {
        "conversation_id": cid, "protocol": "fipa-request", "initiator": "a",
        "participants": ["a", "b"], "state": state, "roles": {"b": state},
        "message_count": 1, "started_at": 10.0, "updated_at": 10.0, "ttl": 60.0,
        "active": True, **changes,
    }  # fmt: skip


async def test_conversations_are_kept_replaced_and_forgotten(store: Store) -> None:
    store.save_conversations([_conversation("c1", "requested"), _conversation("c2", "agreed")])
    await store.flush()
    assert [c["conversation_id"] for c in await store.load_conversations()] == ["c1", "c2"]
    done = _conversation("c1", "done", message_count=3, updated_at=20.0, active=False)
    store.save_conversations([done])
    store.forget_conversations(["c2"])
    assert await store.load_conversations() == [done]
    assert await store.load_conversations(active_only=True) == []
    store.forget_conversations(["c1"])
    store.save_conversations([_conversation("c1", "requested")])  # the id is used again
    assert await store.load_conversations() == [_conversation("c1", "requested")]


async def test_writes_after_close_are_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "local.db")
    await store.open()
    await store.close()
    await store.close()
    with pytest.raises(StoreError, match="is closed"):
        store.kv_put("a", b"k", b"v")


async def test_close_flushes_pending_writes(tmp_path: Path) -> None:
    store = Store(tmp_path / "local.db", flush_interval=60)
    await store.open()
    store.kv_put("a", b"k", b"v")
    await store.close()
    reopened = Store(tmp_path / "local.db")
    await reopened.open()
    assert await reopened.load_kv("a") == {b"k": b"v"}
    await reopened.close()


async def test_unopenable_path_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = Store(blocker / "local.db")
    with pytest.raises((StoreError, OSError)):
        await store.open()


KILLED_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from caxton.store import Store

    async def main():
        store = Store(sys.argv[1], flush_interval=3600)
        await store.open()
        for i in range(500):
            store.kv_put("agent", b"k%d" % i, b"v%d" % i)
        await store.flush()
        store.kv_put("agent", b"unflushed", b"lost")
        print("ready", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


def test_flushed_writes_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "local.db"
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL

    async def reopen() -> dict[bytes, bytes]:
        store = Store(path)
        await store.open()
        try:
            return await store.load_kv("agent")
        finally:
            await store.close()

    kv = asyncio.run(reopen())
    assert len(kv) == 500
    assert kv[b"k499"] == b"v499"
    assert b"unflushed" not in kv  # inside the write-behind window, as documented


def message(n: int) -> Any:
    from caxton.messaging import Message

    return Message(performative="inform", sender="a", receiver="b", content=n)


async def test_outbox_persist_pending_acknowledge(store: Store) -> None:
    first, second = message(1), message(2)
    await store.persist([first, second])
    assert store.commits >= 1
    assert await store.pragma("synchronous") == 1  # back to NORMAL after the FULL commit
    assert [m.content for m in await store.pending()] == [1, 2]
    assert store.seen(first.message_id)
    assert not store.seen(message(3).message_id)
    await store.acknowledge([first.message_id])
    assert [m.message_id for m in await store.pending()] == [second.message_id]
    assert store.seen(first.message_id)  # duplicates of delivered messages are still caught


async def test_concurrent_persists_share_a_commit(store: Store) -> None:
    await store.flush()
    commits = store.commits
    await asyncio.gather(*(store.persist([message(i)]) for i in range(50)))
    assert store.commits - commits <= 2
    assert len(await store.pending()) == 50


async def test_seen_ids_are_bounded_and_reloaded(tmp_path: Path) -> None:
    store = Store(tmp_path / "local.db", seen_limit=3)
    await store.open()
    messages = [message(i) for i in range(5)]
    await store.persist(messages)
    assert [store.seen(m.message_id) for m in messages] == [False, False, True, True, True]
    await store.close()
    reopened = Store(tmp_path / "local.db", seen_limit=3)
    await reopened.open()
    assert [reopened.seen(m.message_id) for m in messages] == [False, False, True, True, True]
    await reopened.close()


async def test_acknowledged_rows_are_pruned_after_the_retention(tmp_path: Path) -> None:
    store = Store(tmp_path / "local.db", outbox_retention=0.0)
    await store.open()
    sent = message(1)
    await store.persist([sent])
    await store.acknowledge([sent.message_id])
    await store.close()
    reopened = Store(tmp_path / "local.db", outbox_retention=0.0)
    await reopened.open()
    rows = await reopened.connection.execute_fetchall("SELECT COUNT(*) FROM outbox")
    assert list(rows) == [(0,)]
    assert not reopened.seen(sent.message_id)
    await reopened.close()


async def test_dead_letters_are_kept(store: Store) -> None:
    lost = message(9)
    store.add_dead_letter(lost, "receiver removed")
    [letter] = await store.dead_letters()
    assert letter["message_id"] == lost.message_id
    assert letter["reason"] == "receiver removed"
    assert letter["message"]["content"] == 9
