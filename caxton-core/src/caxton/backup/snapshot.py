"""Cluster snapshots: every reachable node's backup, taken at once, in one archive.

:func:`take_snapshot` runs on the node the operator asks: it sends the ``backup``
control op to every reachable member at the same moment (each backs itself up online,
:mod:`caxton.backup.service`), reads each backup over the cluster transport in chunks
(``backup-read``), and writes one uncompressed tar to the destination:

- ``cluster.json``: the cluster manifest (snapshot id, the members, the cluster's
  security fingerprint, each node's backup manifest with the sha256 of its file, and
  the members whose backup failed);
- ``nodes/NODE_ID.tar.gz``: each node's backup (:mod:`caxton.backup.archive`).

:func:`plan_restore` reads a snapshot, checks it against the nodes to restore (each
must have a backup in it; the cluster fingerprint must match unless forced) and says
which backup goes to which data directory; :func:`restore_snapshot` verifies every
backup before it replaces any database.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caxton import __version__
from caxton.backup.archive import (
    BackupError,
    RestoreResult,
    add_bytes,
    restore_backup,
    verify_backup,
)
from caxton.backup.destinations import BackupDestination, open_destination
from caxton.errors import Conflict, NotFound

if TYPE_CHECKING:
    from caxton.cluster.service import Cluster
    from caxton.config import Config

__all__ = [
    "RestorePlan",
    "Target",
    "cluster_fingerprint",
    "describe_failures",
    "find_snapshot",
    "open_snapshot",
    "plan_restore",
    "restore_snapshot",
    "take_snapshot",
]

FORMAT = "caxton-cluster-snapshot"
FORMAT_VERSION = 1
MANIFEST_MEMBER = "cluster.json"
PREFIX = "cluster-snapshot-"
SUFFIX = ".tar"


def cluster_fingerprint(config: Config) -> str:
    """What identifies a cluster's membership: its CA (mTLS) or its primary gossip key.

    A digest, never the secret. Empty when the cluster authenticates no one.
    """
    mtls = config["security.cluster.mtls"]
    if mtls["enabled"] and mtls["ca_cert"]:
        try:
            material = b"ca:" + Path(mtls["ca_cert"]).expanduser().read_bytes()
        except OSError:
            return ""
    else:
        keys = config["security.cluster"]["gossip_keys"]
        if not keys:
            return ""
        material = b"gossip-key:" + str(keys[0]).encode()
    return hashlib.sha256(material).hexdigest()[:32]


async def take_snapshot(cluster: Cluster, dest: str, kind: str = "full") -> dict[str, Any]:
    """Back up every reachable node at once and store one archive at ``dest``.

    Returns the cluster manifest, with ``location`` (where the archive went).
    """
    node = cluster.node
    assert node.backups is not None
    # In a thread: building an S3 client (boto3) takes a CPU-bound second or so.
    destination = await asyncio.to_thread(open_destination, dest)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    snapshot_id = f"{PREFIX}{stamp}"
    operations = cluster.operations
    answers = await operations.fan_out("backup", {"type": kind}, timeout=600.0)
    backups = {n: a for n, a in answers.items() if isinstance(a, dict)}
    failed = {n: str(a) for n, a in answers.items() if not isinstance(a, dict)}
    members = sorted(m.node_id for m in cluster.membership.members() if m.status.value != "left")
    staging = Path(tempfile.mkdtemp(prefix=".snapshot-", dir=node.backups.directory))
    try:
        files = {node_id: staging / f"{node_id}.tar.gz" for node_id in backups}
        await asyncio.gather(
            *(_gather(cluster, node_id, backups[node_id], files[node_id]) for node_id in backups)
        )
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "id": snapshot_id,
            "created_at": time.time(),
            "coordinator": cluster.node_id,
            "caxton_version": __version__,
            "type": kind,
            "cluster": {"nodes": members, "fingerprint": cluster_fingerprint(node.config)},
            "backups": {
                node_id: {
                    **backups[node_id],
                    "member": f"nodes/{node_id}.tar.gz",
                    "file_sha256": await asyncio.to_thread(_sha256, files[node_id]),
                }
                for node_id in sorted(backups)
            },
            "failed": failed,
        }
        archive = staging / f"{snapshot_id}{SUFFIX}"
        await asyncio.to_thread(_write_snapshot, archive, manifest, files)
        name = f"{snapshot_id}{SUFFIX}"
        await asyncio.to_thread(destination.put_file, archive, name)
        manifest["location"] = destination.describe(name)
        return manifest
    finally:
        await asyncio.to_thread(shutil.rmtree, staging, True)


async def _gather(cluster: Cluster, node_id: str, backup: dict[str, Any], target: Path) -> None:
    if node_id == cluster.node_id:
        assert cluster.node.backups is not None
        source = cluster.node.backups.path_of(backup["id"])
        await asyncio.to_thread(shutil.copyfile, source, target)
        return
    with target.open("wb") as out:

        async def write(chunk: bytes) -> None:
            out.write(chunk)

        await cluster.operations.fetch_backup(node_id, backup["id"], int(backup["size"]), write)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _write_snapshot(path: Path, manifest: dict[str, Any], files: dict[str, Path]) -> None:
    with path.open("wb") as raw:
        with tarfile.open(fileobj=raw, mode="w") as tar:
            add_bytes(tar, MANIFEST_MEMBER, json.dumps(manifest, indent=2).encode())
            for node_id in sorted(files):
                tar.add(files[node_id], arcname=f"nodes/{node_id}.tar.gz", recursive=False)
        raw.flush()
        os.fsync(raw.fileno())


# -------------------------------------------------------------------------
# Restoring
# -------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A node to restore: its id, its database, and its cluster fingerprint."""

    node_id: str
    database: Path
    fingerprint: str


@dataclass
class RestorePlan:
    snapshot: dict[str, Any]
    #: node id -> (its backup file, extracted, the target)
    steps: dict[str, tuple[Path, Target]]
    workdir: Path

    def rows(self) -> list[tuple[str, str, int, str]]:
        return [
            (
                node_id,
                self.snapshot["backups"][node_id]["id"],
                int(self.snapshot["backups"][node_id]["agents"]),
                str(target.database),
            )
            for node_id, (_file, target) in sorted(self.steps.items())
        ]


def find_snapshot(destination: BackupDestination, snapshot: str | None) -> str:
    """The name of snapshot ``snapshot`` (an id or file name), or of the newest one."""
    names = [
        n
        for n in destination.names()
        if n.rsplit("/", 1)[-1].startswith(PREFIX) and n.endswith(SUFFIX)
    ]
    if snapshot:
        wanted = snapshot if snapshot.endswith(SUFFIX) else snapshot + SUFFIX
        matches = [n for n in names if n.rsplit("/", 1)[-1] == wanted.rsplit("/", 1)[-1]]
        if not matches:
            raise NotFound(f"no snapshot {snapshot} in {destination.url}")
        return matches[-1]
    if not names:
        raise NotFound(f"no cluster snapshot ({PREFIX}*{SUFFIX}) in {destination.url}")
    return max(names, key=lambda n: n.rsplit("/", 1)[-1])


def open_snapshot(source: str, snapshot: str | None, workdir: Path) -> tuple[dict[str, Any], Path]:
    """Fetch the snapshot from ``source`` into ``workdir``; its manifest and the file."""
    if source.endswith(SUFFIX) and "://" not in source and Path(source).is_file():
        archive = Path(source)
    else:
        if source.endswith(SUFFIX):
            source, snapshot = source.rsplit("/", 1)[0], source.rsplit("/", 1)[1]
        destination = open_destination(source)
        name = find_snapshot(destination, snapshot)
        archive = workdir / name.rsplit("/", 1)[-1]
        destination.get_file(name, archive)
    try:
        with tarfile.open(archive, mode="r:") as tar:
            member = tar.next()
            if member is None or member.name != MANIFEST_MEMBER:
                raise BackupError(f"{archive.name} is not a cluster snapshot (no cluster.json)")
            stream = tar.extractfile(member)
            assert stream is not None
            manifest = json.loads(stream.read())
    except (tarfile.TarError, OSError, ValueError, EOFError) as exc:
        raise BackupError(f"{archive.name} is not a readable cluster snapshot: {exc}") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise BackupError(f"{archive.name} is not a cluster snapshot this Caxton reads")
    return manifest, archive


def plan_restore(
    source: str,
    targets: list[Target],
    *,
    snapshot: str | None = None,
    force: bool = False,
    workdir: Path,
) -> RestorePlan:
    """Which backup of the snapshot goes to which target; refuse a mismatched cluster.

    Each target's node must have a backup in the snapshot, and the snapshot's cluster
    fingerprint (CA or gossip key) must be the target's unless ``force``. Every backup
    to restore is extracted and verified here, before anything is replaced.
    """
    manifest, archive = open_snapshot(source, snapshot, workdir)
    held = manifest.get("backups", {})
    theirs = manifest.get("cluster", {}).get("fingerprint", "")
    steps: dict[str, tuple[Path, Target]] = {}
    with tarfile.open(archive, mode="r:") as tar:
        for target in targets:
            if target.node_id not in held:
                raise Conflict(
                    f"snapshot {manifest['id']} has no backup of node {target.node_id} (it "
                    f"holds {', '.join(sorted(held)) or 'none'}); is this the right cluster?"
                )
            if theirs and target.fingerprint != theirs and not force:
                raise Conflict(
                    f"snapshot {manifest['id']} is of another cluster than node "
                    f"{target.node_id}'s (their CA or gossip key differs); restore it with "
                    f"--force to adopt it anyway"
                )
            entry = held[target.node_id]
            file = workdir / f"{target.node_id}.tar.gz"
            try:
                stream = tar.extractfile(entry["member"])
            except KeyError:
                raise BackupError(f"snapshot {manifest['id']} lacks {entry['member']}") from None
            assert stream is not None
            with file.open("wb") as out:
                shutil.copyfileobj(stream, out, 1024 * 1024)
            if _sha256(file) != entry["file_sha256"]:
                raise BackupError(f"snapshot {manifest['id']}: {entry['member']} is damaged")
            verify_backup(file)
            steps[target.node_id] = (file, target)
    return RestorePlan(manifest, steps, workdir)


def restore_snapshot(plan: RestorePlan) -> dict[str, RestoreResult]:
    """Restore every planned backup (each node must be stopped); node id -> result."""
    from caxton.backup.archive import running_node

    for node_id, (_file, target) in plan.steps.items():
        holder = running_node(target.database, target.database.parent)
        if holder:
            raise Conflict(f"node {node_id} is running ({holder}): stop it, then restore")
    results = {}
    for node_id, (file, target) in sorted(plan.steps.items()):
        results[node_id] = restore_backup(file, target.database, node_id=node_id)
    return results


def describe_failures(manifest: dict[str, Any]) -> str:
    failed = manifest.get("failed") or {}
    return "; ".join(f"{n}: {reason}" for n, reason in sorted(failed.items()))
