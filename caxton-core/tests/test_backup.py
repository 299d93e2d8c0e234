"""Node backups: made online through REST while the node serves, verified, restored to a
node that serves its agents with their state; damaged and foreign backups refused."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import io
import json
import os
import sqlite3
import tarfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from caxton.backup.archive import (
    BackupError,
    list_backups,
    make_backup,
    read_manifest,
    restore_backup,
    store_in_use,
    verify_backup,
)
from caxton.backup.destinations import DirectoryDestination, open_destination
from caxton.errors import Conflict, DriverNotFound
from caxton.node import Node
from caxton.store import Store
from caxton.testing import NodeFactory


async def api(node: Node, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    assert node.api_address is not None
    host, port = node.api_address
    async with (
        aiohttp.ClientSession(f"http://{host}:{port}") as session,
        session.request(method, path, json=body) as response,
    ):
        data = await response.read()
        if response.content_type == "application/json":
            return response.status, json.loads(data)
        return response.status, data


async def deploy_counter(node: Node, wasm: bytes, name: str = "counter") -> None:
    status, answer = await api(
        node,
        "POST",
        "/api/v1/agents",
        {"name": name, "wasm_module": base64.b64encode(wasm).decode()},
    )
    assert status == 201, answer


async def tick(node: Node, name: str = "counter") -> int:
    status, answer = await api(
        node,
        "POST",
        "/api/v1/messages",
        {"performative": "request", "receiver": name, "content": "tick", "wait_ms": 5000},
    )
    assert status == 200, answer
    return int(answer["reply"]["content"]["count"])


async def test_backup_while_serving_then_restore_serves_the_agents_with_their_state(
    caxton_node_factory: NodeFactory, example_agents: dict[str, bytes], tmp_path: Path
) -> None:
    async with caxton_node_factory.node("n1") as node:
        await deploy_counter(node, example_agents["counter"])
        for expected in (1, 2, 3):
            assert await tick(node) == expected
        # Messages keep flowing while the backup is made.
        ticking = asyncio.gather(*(tick(node) for _ in range(20)))
        status, entry = await api(node, "POST", "/api/v1/backups", {"type": "full"})
        counts = await ticking
        assert status == 201, entry
        assert sorted(counts) == list(range(4, 24))
        assert entry["node_id"] == "n1"
        assert os.stat(entry["path"]).st_mode & 0o077 == 0  # API-key hashes inside
        assert entry["agents"] == 1
        assert entry["schema_versions"]["core"] >= 1
        status, listing = await api(node, "GET", "/api/v1/backups")
        assert [b["id"] for b in listing["backups"]] == [entry["id"]]
        status, verified = await api(node, "POST", f"/api/v1/backups/{entry['id']}/verify")
        assert status == 200
        assert verified["verified"] is True
        status, archive = await api(node, "GET", f"/api/v1/backups/{entry['id']}/archive")
        assert status == 200
        assert archive[:2] == b"\x1f\x8b"  # gzip
        database = node.store.path
        assert store_in_use(database)
        with pytest.raises(Conflict, match=rf"is running \(pid {os.getpid()}\)"):
            restore_backup(Path(entry["path"]), database, node_id="n1")
        after = await tick(node)
    # Stopped: restore, start again, the counter goes on from what the backup held.
    result = restore_backup(Path(entry["path"]), database, node_id="n1")
    assert result.replaced is not None
    assert result.replaced.exists()
    with contextlib.closing(sqlite3.connect(database)) as db:
        (saved,) = db.execute("SELECT value FROM agent_kv WHERE key = x'636f756e74'").fetchone()
    assert 3 <= int(saved) < after  # 3, and the ticks committed before the backup began
    async with caxton_node_factory.node("n1") as node:
        assert await tick(node) == int(saved) + 1


async def test_state_backup_leaves_out_dead_letters_and_keys(tmp_path: Path) -> None:
    store = Store(tmp_path / "local.db")
    await store.open()
    conn = store.connection
    await conn.execute(
        "INSERT INTO dead_letters (message_id, receiver, reason, body, created_at)"
        " VALUES ('m', 'r', 'x', x'7b7d', 0)"
    )
    await store.close()
    _path, full = make_backup(tmp_path / "local.db", tmp_path / "b", node_id="n1")
    path, state = make_backup(tmp_path / "local.db", tmp_path / "b", node_id="n1", kind="state")
    assert (full.type, state.type) == ("full", "state")
    restored = tmp_path / "restored.db"
    restore_backup(path, restored, node_id="n1")
    with contextlib.closing(sqlite3.connect(restored)) as db:
        assert db.execute("SELECT COUNT(*) FROM dead_letters").fetchone() == (0,)


@pytest.fixture
def backup_file(tmp_path: Path) -> Path:
    db = tmp_path / "src.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE schema_migrations (namespace, version, description, at)")
        conn.execute("INSERT INTO schema_migrations VALUES ('core', 3, 'x', 0)")
        conn.execute("CREATE TABLE agents (id)")
        conn.execute("INSERT INTO agents VALUES ('a')")
    path, _ = make_backup(db, tmp_path / "backups", node_id="n1")
    return path


def rewrite(path: Path, change: Any) -> None:
    """Rebuild the archive at ``path`` with ``change(name, data) -> data``."""
    with tarfile.open(path, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for member, data in members:
            data = change(member.name, data)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    path.write_bytes(buffer.getvalue())


def test_verify_refuses_a_changed_database(backup_file: Path) -> None:
    assert verify_backup(backup_file).agents == 1

    def flip(name: str, data: bytes) -> bytes:
        return data[:-1] + bytes([data[-1] ^ 1]) if name == "state.db" else data

    rewrite(backup_file, flip)
    with pytest.raises(BackupError, match="checksum mismatch"):
        verify_backup(backup_file)


def test_verify_refuses_a_manifest_that_lies(backup_file: Path) -> None:
    def lie(name: str, data: bytes) -> bytes:
        if name != "manifest.json":
            return data
        return json.dumps({**json.loads(data), "agents": 7}).encode()

    rewrite(backup_file, lie)
    with pytest.raises(BackupError, match="does not match its manifest"):
        verify_backup(backup_file)


def test_truncated_and_foreign_files_are_refused(backup_file: Path, tmp_path: Path) -> None:
    data = backup_file.read_bytes()
    backup_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(BackupError):
        verify_backup(backup_file)
    other = tmp_path / "other.tar.gz"
    other.write_bytes(gzip.compress(b"not a tar"))
    with pytest.raises(BackupError):
        read_manifest(other)


def test_restore_refuses_another_node_unless_forced(backup_file: Path, tmp_path: Path) -> None:
    target = tmp_path / "n2" / "local.db"
    with pytest.raises(Conflict, match="backup of node n1, not n2"):
        restore_backup(backup_file, target, node_id="n2")
    assert not target.exists()
    assert restore_backup(backup_file, target, node_id="n2", force=True).manifest.node_id == "n1"


def test_partial_files_are_never_listed(backup_file: Path) -> None:
    directory = backup_file.parent
    (directory / ".backup-20990101-000000.999999999.tar.gz.partial").write_bytes(b"half")
    assert [b["id"] for b in list_backups(directory)] == [backup_file.name[: -len(".tar.gz")]]


async def test_a_migration_is_preceded_by_a_backup(tmp_path: Path) -> None:
    from caxton.store.migrations import CORE_MIGRATIONS, Migration

    store = Store(tmp_path / "local.db", node_id="n1", migration_backups=tmp_path / "backups")
    await store.open()  # a new database: nothing to back up
    await store.close()
    assert not list_backups(tmp_path / "backups")
    store = Store(tmp_path / "local.db", node_id="n1", migration_backups=tmp_path / "backups")
    store._migrations["core"] = (
        *CORE_MIGRATIONS,
        Migration(len(CORE_MIGRATIONS) + 1, "test", "CREATE TABLE later (x)"),
    )
    await store.open()
    await store.close()
    (entry,) = list_backups(tmp_path / "backups")
    assert entry["schema_versions"]["core"] == len(CORE_MIGRATIONS)
    assert entry["note"].startswith(f"before migrating core v{len(CORE_MIGRATIONS)}")


def test_destinations(tmp_path: Path, backup_file: Path) -> None:
    destination = open_destination(str(tmp_path / "dest"))
    assert isinstance(destination, DirectoryDestination)
    for n in range(3):
        destination.put_file(backup_file, f"n1/b{n}.tar.gz")
    assert destination.prune("n1/", 2) == ["n1/b0.tar.gz"]
    assert destination.names() == ["n1/b1.tar.gz", "n1/b2.tar.gz"]
    with pytest.raises(DriverNotFound, match="no backup destination driver for ftp"):
        open_destination("ftp://example/x")


async def test_scheduled_backups_keep_the_retention_here_and_at_dest(
    caxton_node_factory: NodeFactory, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    config = {"backup.schedule": "300ms", "backup.retention": 2, "backup.dest": str(dest)}
    async with caxton_node_factory.node("n1", config=config) as node:
        assert node.backups is not None
        for _ in range(200):
            if node.backups.made >= 4:
                break
            await asyncio.sleep(0.05)
        assert node.backups.made >= 4
        # Each scheduled backup is followed by pruning, here and at dest, to 2.
        for _ in range(100):
            here = node.backups.entries()
            there = DirectoryDestination(str(dest)).names("n1/")
            if len(here) == len(there) == 2:
                break
            await asyncio.sleep(0.02)
        assert len(here) == len(there) == 2, (here, there)
        assert node.metrics_address is not None
        host, port = node.metrics_address
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://{host}:{port}/metrics") as response,
        ):
            text = await response.text()
        (line,) = [
            x for x in text.splitlines() if x.startswith("caxton_backup_last_success_timestamp")
        ]
        assert abs(float(line.split()[1]) - node.backups.last_success) < 1  # type: ignore[operator]
