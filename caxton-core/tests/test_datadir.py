"""One node per data directory (an exclusive lock naming its pid), and private files:
the directory 0700, the store (API-key hashes) and the lock 0600 (issue 13, item 4)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from caxton import hookimpl
from caxton.datadir import LOCK_NAME, DataDirLock, DataDirLocked, lock_holder
from caxton.testing import NodeFactory


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_a_second_node_on_a_data_directory_is_refused(
    caxton_node_factory: NodeFactory, tmp_path: Path
) -> None:
    data_dir = tmp_path / "shared"
    async with caxton_node_factory.node("first", config={"node.data_dir": str(data_dir)}):
        assert lock_holder(data_dir) == os.getpid()
        second = caxton_node_factory.build("second", config={"node.data_dir": str(data_dir)})
        with pytest.raises(DataDirLocked, match=rf"in use by another node \(pid {os.getpid()}\)"):
            await second.start()
        assert second.state == "failed"
        assert second.store is None  # refused before it opened (or restored) anything
    assert lock_holder(data_dir) is None
    async with caxton_node_factory.node("third", config={"node.data_dir": str(data_dir)}):
        pass  # a stopped node's directory is free again


async def test_the_data_directory_and_the_store_are_private(
    caxton_node_factory: NodeFactory, tmp_path: Path
) -> None:
    data_dir = tmp_path / "private"
    async with caxton_node_factory.node(config={"node.data_dir": str(data_dir)}) as node:
        await node.store.flush()
        assert mode(data_dir) == 0o700
        for name in ("local.db", "local.db-wal", "local.db-shm", "caxton.lock"):
            assert mode(data_dir / name) == 0o600, name


async def test_an_existing_open_directory_and_store_are_narrowed(
    caxton_node_factory: NodeFactory, tmp_path: Path
) -> None:
    data_dir = tmp_path / "open"
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    (data_dir / "local.db").touch()
    (data_dir / "local.db").chmod(0o644)
    async with caxton_node_factory.node(config={"node.data_dir": str(data_dir)}):
        assert mode(data_dir) == 0o700
        assert mode(data_dir / "local.db") == 0o600


def test_the_lock_goes_with_its_process_however_it_ends(tmp_path: Path) -> None:
    code = (
        "import sys, time; from pathlib import Path; from caxton.datadir import DataDirLock;"
        "DataDirLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "locked\n"
        assert lock_holder(tmp_path) == holder.pid
        with pytest.raises(DataDirLocked, match=f"pid {holder.pid}"):
            DataDirLock(tmp_path).acquire()
    finally:
        holder.kill()  # SIGKILL: no clean-up runs
        holder.wait()
    deadline = time.monotonic() + 10
    while lock_holder(tmp_path) is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert lock_holder(tmp_path) is None
    lock = DataDirLock(tmp_path)
    lock.acquire()
    lock.release()


async def test_a_stopping_node_says_so_in_its_lock(
    caxton_node_factory: NodeFactory, tmp_path: Path
) -> None:
    data_dir = tmp_path / "closing"
    seen: list[str] = []

    class LockReader:
        @hookimpl
        def caxton_node_stopping(self, node: Any) -> None:
            seen.append((data_dir / LOCK_NAME).read_text())

    caxton_node_factory.register(LockReader())
    async with caxton_node_factory.node(config={"node.data_dir": str(data_dir)}):
        assert (data_dir / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    assert seen == [f"{os.getpid()} stopping\n"]


def hold(tmp_path: Path, then: str) -> subprocess.Popen[str]:
    """A process that takes the lock of ``tmp_path``, runs ``then``, prints 'ready'."""
    code = (
        "import sys, time; from pathlib import Path; from caxton.datadir import DataDirLock;"
        f"lock = DataDirLock(Path(sys.argv[1])); lock.acquire(); {then};"
        "print('ready', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    assert holder.stdout.readline() == "ready\n"
    return holder


def test_a_node_that_is_stopping_is_waited_for_not_refused(tmp_path: Path) -> None:
    """A rolling restart's start command can run while the old node still closes: the
    new one waits for a holder marked stopping (for a bounded time), never for a running one."""
    holder = hold(tmp_path, "lock.mark_stopping()")
    try:
        assert lock_holder(tmp_path) == holder.pid  # the mark keeps the pid readable
        with pytest.raises(DataDirLocked, match=rf"stopping \(pid {holder.pid}\) after 0.3 s"):
            DataDirLock(tmp_path).acquire(stopping_wait=0.3)
        lock = DataDirLock(tmp_path)
        ended = subprocess.Popen(["sh", "-c", f"sleep 0.5; kill {holder.pid}"])
        lock.acquire(stopping_wait=30)  # waits until the holder is gone, then takes it
        assert holder.wait(10) is not None
        ended.wait()
        assert lock_holder(tmp_path) == os.getpid()
        lock.release()
    finally:
        holder.kill()
        holder.wait()
    running = hold(tmp_path, "pass")
    try:
        with pytest.raises(DataDirLocked, match="in use by another node"):  # at once
            DataDirLock(tmp_path).acquire(stopping_wait=30)
    finally:
        running.kill()
        running.wait()
