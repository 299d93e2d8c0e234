"""``caxton backup``: create, list, verify and restore a node's backups; and the cluster
snapshot commands ``caxton cluster backup`` / ``caxton cluster restore``.

``create`` and ``list`` drive a running node through its REST API (``--api-url``);
``verify`` and ``restore`` work on files and data directories, so they also work while
the node is stopped, which ``restore`` requires. See docs/operations.md.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from caxton.cli.client import api_options, json_option
from caxton.cli.client_http import ApiClient
from caxton.cli.main import emit_json, render_table
from caxton.datadir import expand_user
from caxton.units import format_size

__all__ = ["COMMANDS"]


# -------------------------------------------------------------------------
# Local settings: which data directory, database and node id
# -------------------------------------------------------------------------


class LocalNode:
    """Where a node keeps its state, from ``--config`` and the flags (no node started)."""

    def __init__(
        self, config_path: str | None, data_dir: str | None, node_id: str | None = None
    ) -> None:
        from caxton.backup.service import backup_directory
        from caxton.node import build_host_and_config

        overrides: dict[str, Any] = {}
        if data_dir is not None:
            overrides["node.data_dir"] = data_dir
        if node_id is not None:
            overrides["node.id"] = node_id
        _host, config = build_host_and_config(config_path, overrides=overrides)
        self.config = config
        self.data_dir = Path(config["node"]["data_dir"]).expanduser()
        self.node_id: str = config["node"]["id"] or _recorded_node_id(self.data_dir)
        local = config["coordination"]["local_state_path"]
        self.database = Path(local).expanduser() if local else self.data_dir / "local.db"
        self.backups = backup_directory(config, self.data_dir)


def _recorded_node_id(data_dir: Path) -> str:
    """The node id a ``cluster stop --all`` recorded in ``data_dir`` (the node that
    stopped there), else the host name, the default node id."""
    from caxton.cluster.shutdown import read_record

    record = read_record(data_dir)
    node_id = record.get("node_id") if record is not None else None
    return node_id if isinstance(node_id, str) and node_id else socket.gethostname()


def local_options(command: Any) -> Any:
    for option in reversed(
        (
            click.option(
                "--config",
                "config_path",
                type=click.Path(dir_okay=False),
                default=None,
                help="The node's config file (default: $CAXTON_CONFIG_PATH).",
            ),
            click.option(
                "--data-dir",
                "--target",
                "data_dir",
                type=click.Path(file_okay=False),
                default=None,
                help="The node's data directory (default: node.data_dir of the config).",
            ),
        )
    ):
        command = option(command)
    return command


def _describe(entry: dict[str, Any]) -> str:
    return (
        f"{entry['id']} of node {entry['node_id']} ({entry['type']}, {entry['agents']} agents, "
        f"{format_size(int(entry.get('size') or entry['database_size']))})"
    )


def download(client: ApiClient, path: str, target: Path) -> None:
    """GET ``path`` into ``target``, atomically (a partial file is never left in place)."""
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        with partial.open("wb") as out:
            for chunk in client.iter_bytes(path):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()


# -------------------------------------------------------------------------
# caxton backup
# -------------------------------------------------------------------------


@click.group("backup")
def backup_group() -> None:
    """Back up and restore a node's state store."""


@backup_group.command("create")
@click.option(
    "--type",
    "kind",
    type=click.Choice(["full", "state"]),
    default="full",
    show_default=True,
    help="full: the whole store; state: agents, modules, key/value state, messages.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also download the backup to this file.",
)
@click.option(
    "--destination",
    "--dest",
    "destination",
    default=None,
    metavar="DIR|s3://BUCKET/PREFIX",
    help="Also copy the backup there (as NODE_ID/BACKUP_ID.tar.gz).",
)
@click.option("--compress", is_flag=True, help="Accepted for the runbook: always compressed.")
@json_option
@api_options
def backup_create(
    client: ApiClient,
    kind: str,
    output: str | None,
    destination: str | None,
    compress: bool,
    as_json: bool,
) -> None:
    """Back up the node --api-url reaches, online, into its backup directory."""
    entry = client.request("POST", "/api/v1/backups", {"type": kind}, wait=3600)
    archive = f"/api/v1/backups/{entry['id']}/archive"
    if output is not None:
        download(client, archive, Path(output))
        entry["output"] = str(Path(output).resolve())
    if destination is not None:
        from caxton.backup.destinations import open_destination

        store = open_destination(destination)
        with tempfile.TemporaryDirectory(prefix="caxton-backup-") as tmp:
            local = Path(tmp) / f"{entry['id']}.tar.gz"
            download(client, archive, local)
            name = f"{entry['node_id']}/{local.name}"
            store.put_file(local, name)
        entry["destination"] = store.describe(name)
    if as_json:
        emit_json(entry)
        return
    click.echo(f"Backup {_describe(entry)}: {entry['path']}")
    for key in ("output", "destination"):
        if key in entry:
            click.echo(f"Copied to {entry[key]}")


@backup_group.command("list")
@click.option(
    "--data-dir",
    "data_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="List a stopped node's backups from its data directory instead of asking it.",
)
@json_option
@api_options
def backup_list(client: ApiClient, data_dir: str | None, as_json: bool) -> None:
    """The node's backups, oldest first."""
    if data_dir is not None:
        from caxton.backup.archive import list_backups

        entries = list_backups(LocalNode(None, data_dir).backups)
    else:
        entries = client.request("GET", "/api/v1/backups")["backups"]
    if as_json:
        emit_json(entries)
        return
    click.echo(
        render_table(
            ("ID", "NODE", "TYPE", "AGENTS", "SIZE", "CREATED"),
            [
                (
                    e["id"],
                    e.get("node_id", "-"),
                    e.get("type", "-"),
                    e.get("agents", "-"),
                    format_size(int(e.get("size", 0))),
                    time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e["created_at"]))
                    if "created_at" in e
                    else f"unreadable: {e.get('error', '')}",
                )
                for e in entries
            ],
        )
    )


def _backup_file(file: str | None, backup_id: str | None, local: LocalNode | None) -> Path:
    from caxton.backup.archive import find_backup

    if file is not None and backup_id is None:
        return find_backup(file, Path("."))
    if file is None and backup_id is not None and local is not None:
        return find_backup(backup_id, local.backups)
    raise click.UsageError("give a backup FILE or --id BACKUP_ID (one of them)")


@backup_group.command("verify")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.option("--id", "backup_id", help="A backup of the node's backup directory, by id.")
@local_options
@json_option
def backup_verify(
    file: str | None,
    backup_id: str | None,
    config_path: str | None,
    data_dir: str | None,
    as_json: bool,
) -> None:
    """Check a backup: its manifest, sha256 and SQLite integrity_check."""
    from caxton.backup.archive import verify_backup

    local = LocalNode(config_path, data_dir) if backup_id is not None else None
    path = _backup_file(file, backup_id, local)
    manifest = verify_backup(path)
    if as_json:
        emit_json({**manifest.to_dict(), "path": str(path), "verified": True})
        return
    click.echo(f"{path}: OK: {_describe({**manifest.to_dict(), 'size': path.stat().st_size})}")


@backup_group.command("restore")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.option("--id", "backup_id", help="A backup of the node's backup directory, by id.")
@click.option("--node-id", default=None, help="The node restored (default: node.id or host name).")
@click.option("--force", is_flag=True, help="Restore a backup of another node id.")
@local_options
@json_option
def backup_restore(
    file: str | None,
    backup_id: str | None,
    node_id: str | None,
    force: bool,
    config_path: str | None,
    data_dir: str | None,
    as_json: bool,
) -> None:
    """Replace a stopped node's state store with a backup (the old one is kept aside)."""
    from caxton.backup.archive import restore_backup
    from caxton.cli.security_auth import audit_local

    local = LocalNode(config_path, data_dir, node_id)
    path = _backup_file(file, backup_id, local)
    result = restore_backup(
        path, local.database, node_id=local.node_id, force=force, data_dir=local.data_dir
    )
    audit_local(local.config, "backup_restore", str(local.database), f"from {path}")
    if as_json:
        emit_json(
            {
                **result.manifest.to_dict(),
                "database": str(result.database),
                "replaced": str(result.replaced) if result.replaced else None,
            }
        )
        return
    click.echo(
        f"Restored {result.manifest.id} of node {result.manifest.node_id} "
        f"({result.manifest.agents} agents) into {result.database}"
    )
    if result.replaced is not None:
        click.echo(f"The replaced database is kept as {result.replaced}")


# -------------------------------------------------------------------------
# caxton cluster backup / restore
# -------------------------------------------------------------------------


@click.command("backup")
@click.option(
    "--dest",
    "--destination",
    "dest",
    required=True,
    metavar="DIR|s3://BUCKET/PREFIX",
    help="Where the snapshot goes (written by the node --api-url reaches).",
)
@click.option("--type", "kind", type=click.Choice(["full", "state"]), default="full")
@json_option
@api_options
def cluster_backup(client: ApiClient, dest: str, kind: str, as_json: bool) -> None:
    """Back up every reachable node at once into one snapshot archive."""
    from caxton.backup.snapshot import describe_failures

    if "://" not in dest:
        dest = str(expand_user(dest).resolve())
    manifest = client.request(
        "POST", "/api/v1/cluster/backups", {"dest": dest, "type": kind}, wait=3600
    )
    if as_json:
        emit_json(manifest)
    else:
        click.echo(
            render_table(
                ("NODE", "BACKUP", "AGENTS", "SIZE"),
                [
                    (n, b["id"], b["agents"], format_size(int(b["size"])))
                    for n, b in sorted(manifest["backups"].items())
                ],
            )
        )
        click.echo(f"Snapshot {manifest['id']}: {manifest['location']}")
    if manifest["failed"]:
        raise click.ClickException(f"some nodes have no backup: {describe_failures(manifest)}")


def _targets(
    values: tuple[str, ...], config_path: str | None, data_dir: str | None, node_id: str | None
) -> list[Any]:
    from caxton.backup.snapshot import Target, cluster_fingerprint

    if not values:
        local = LocalNode(config_path, data_dir, node_id)
        return [Target(local.node_id, local.database, cluster_fingerprint(local.config))]
    targets = []
    for value in values:
        name, sep, directory = value.partition("=")
        if not sep or not name or not directory:
            raise click.BadParameter(
                f"expected NODE=DATA_DIR, got {value!r}", param_hint="--target"
            )
        local = LocalNode(config_path, directory, name)
        targets.append(Target(name, local.database, cluster_fingerprint(local.config)))
    return targets


@click.command("restore")
@click.option(
    "--from",
    "source",
    required=True,
    metavar="DIR|s3://BUCKET/PREFIX|FILE",
    help="Where the snapshots are (the newest is used) or one snapshot file.",
)
@click.option("--snapshot", default=None, help="A snapshot id (default: the newest).")
@click.option(
    "--target",
    "targets",
    multiple=True,
    metavar="NODE=DATA_DIR",
    help="Restore NODE into DATA_DIR; repeat for several nodes of this host.",
)
@click.option("--node-id", default=None, help="Without --target: this node's id.")
@click.option(
    "--data-dir",
    "data_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Without --target: this node's data directory.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="The nodes' config file (their cluster keys or CA, data directory, node id).",
)
@click.option("--force", is_flag=True, help="Restore a snapshot of another cluster.")
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@json_option
def cluster_restore(
    source: str,
    snapshot: str | None,
    targets: tuple[str, ...],
    node_id: str | None,
    data_dir: str | None,
    config_path: str | None,
    force: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Restore stopped nodes from a cluster snapshot, each from its own backup."""
    from caxton.backup.snapshot import plan_restore, restore_snapshot

    chosen = _targets(targets, config_path, data_dir, node_id)
    with tempfile.TemporaryDirectory(prefix="caxton-restore-") as tmp:
        plan = plan_restore(source, chosen, snapshot=snapshot, force=force, workdir=Path(tmp))
        rows = plan.rows()
        results = {} if dry_run else restore_snapshot(plan)
    if not dry_run:
        from caxton.cli.security_auth import audit_local

        for node_id, _backup, _agents, database in rows:
            local = LocalNode(config_path, str(Path(database).parent), node_id)
            audit_local(local.config, "cluster_restore", database, f"{plan.snapshot['id']}")
    if as_json:
        emit_json(
            {
                "snapshot": plan.snapshot["id"],
                "dry_run": dry_run,
                "nodes": [
                    {
                        "node_id": n,
                        "backup": b,
                        "agents": a,
                        "database": d,
                        "replaced": str(results[n].replaced)
                        if n in results and results[n].replaced
                        else None,
                    }
                    for n, b, a, d in rows
                ],
            }
        )
        return
    click.echo(f"Snapshot {plan.snapshot['id']} ({'plan only' if dry_run else 'restored'}):")
    click.echo(render_table(("NODE", "BACKUP", "AGENTS", "DATABASE"), rows))


COMMANDS: list[click.Command] = [backup_group]

#: Added to ``caxton cluster`` (:mod:`caxton.cli.cluster`).
CLUSTER_COMMANDS: list[click.Command] = [cluster_backup, cluster_restore]
