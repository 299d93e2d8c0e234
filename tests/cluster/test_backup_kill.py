"""``kill -9`` a real node process while ``caxton backup create`` runs: every backup that
was completed verifies and restores to a node serving its agent with its state, and no
partial file is ever reported as a backup.

CI kills the node ``CAXTON_BACKUP_KILLS`` times (default 4, under a minute on CI);
``CAXTON_BACKUP_KILLS=20`` is the issue's full run.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from cluster_support import NodeProcess, ProcessCluster, caxton_command, clean_environment

from caxton.backup.archive import extract_verified, list_backups, verify_backup
from caxton.testing.sandbox import build_example_agents

pytestmark = pytest.mark.cluster

KILLS = int(os.environ.get("CAXTON_BACKUP_KILLS", "4"))
#: Random bytes in the store, so that a backup takes long enough to be killed in.
BALLAST_MB = 24


def caxton(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*caxton_command(), *args],
        capture_output=True,
        text=True,
        env=clean_environment(),
        timeout=120,
    )


def count(node: NodeProcess) -> int:
    return int(node.ask("counter", "tick")["reply"]["content"]["count"])


def saved_count(backup: Path, workdir: Path) -> int:
    """The counter's count as the backup holds it."""
    database = workdir / "check.db"
    extract_verified(backup, database)
    db = sqlite3.connect(database)
    (value,) = db.execute("SELECT value FROM agent_kv WHERE key = ?", (b"count",)).fetchone()
    db.close()
    database.unlink()
    return int(value)


def start(cluster: ProcessCluster, node: NodeProcess) -> None:
    node.process = None
    node.start(bootstrap=True)
    cluster.wait_until(node.ready, 60, "n1 ready")


def test_kill_during_backup_create(tmp_path: Path) -> None:
    seed = int(os.environ.get("CAXTON_BACKUP_SEED", str(random.randrange(1 << 30))))
    rng = random.Random(seed)
    counter = build_example_agents(tmp_path / "agents")["counter"]
    cluster = ProcessCluster(tmp_path / "cluster")
    try:
        (node,) = cluster.start(1)
        path = tmp_path / "counter.wasm"
        path.write_bytes(counter)
        deployed = caxton("deploy", str(path), "--name", "counter", "--api-url", node.api_url)
        assert deployed.returncode == 0, deployed.stderr
        assert count(node) == 1
        node.stop()
        db = sqlite3.connect(node.data_dir / "local.db")
        with db:  # commits; the connection is closed below (a `with` does not)
            db.execute("CREATE TABLE ballast (chunk BLOB)")
            for _ in range(BALLAST_MB):
                db.execute("INSERT INTO ballast VALUES (?)", (os.urandom(1 << 20),))
        db.close()
        start(cluster, node)
        started = time.monotonic()
        first = caxton("backup", "create", "--json", "--api-url", node.api_url)
        took = time.monotonic() - started
        assert first.returncode == 0, first.stderr
        reported: list[dict[str, Any]] = [json.loads(first.stdout)]

        backups = node.data_dir / "backups"
        for kill in range(KILLS):
            count(node)  # each backup holds another count
            create = subprocess.Popen(
                [*caxton_command(), "backup", "create", "--json", "--api-url", node.api_url],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=clean_environment(),
            )
            time.sleep(rng.uniform(0.0, took * 1.2))
            node.kill()  # SIGKILL, wherever the backup is
            out, _err = create.communicate(timeout=60)
            if create.returncode == 0:
                reported.append(json.loads(out))
            listed = {b["id"]: b for b in list_backups(backups)}
            for entry in reported:
                assert entry["id"] in listed, f"kill {kill}: {entry['id']} reported, not there"
            for entry in listed.values():
                assert "error" not in entry, f"kill {kill} (seed {seed}): {entry}"
                verify_backup(Path(entry["path"]))
            visible = sorted(p.name for p in backups.iterdir() if not p.name.startswith("."))
            assert visible == sorted(f"{i}.tar.gz" for i in listed), visible
            start(cluster, node)

        node.kill()
        complete = list_backups(backups)
        assert len(complete) >= len(reported) >= 1
        listing = caxton("backup", "list", "--data-dir", str(node.data_dir), "--json")
        assert [b["id"] for b in json.loads(listing.stdout)] == [b["id"] for b in complete]
        for entry in complete:
            expected = saved_count(Path(entry["path"]), tmp_path) + 1
            restored = caxton(
                "backup", "restore", entry["path"], "--data-dir", str(node.data_dir),
                "--node-id", "n1",
            )  # fmt: skip
            assert restored.returncode == 0, restored.stderr
            start(cluster, node)
            assert count(node) == expected, f"{entry['id']} (seed {seed})"
            node.kill()
        print(f"{KILLS} kills (seed {seed}): {len(complete)} complete backups, all restored")
    finally:
        cluster.close()
