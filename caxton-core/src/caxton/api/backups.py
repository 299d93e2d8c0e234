"""``/api/v1/backups``: a node's backups, made online while it serves.

All routes need the ``cluster`` permission (admins), which the audit log records: a
backup holds the node's whole state store, API-key hashes included. Restoring is not
a REST operation: it replaces the database of a stopped node (``caxton backup
restore``, docs/operations.md).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from caxton.api.common import body, service
from caxton.api.keys import NODE
from caxton.api.openapi import object_schema, operation, schema_ref, string_schema
from caxton.api.permissions import requires
from caxton.api.responses import json_response
from caxton.backup.archive import BACKUP_TYPES, verify_backup
from caxton.errors import Conflict, ValidationError

__all__ = ["extend_openapi", "routes"]

routes = web.RouteTableDef()

_ID_PATTERN = r"^backup-[0-9]{8}-[0-9]{6}(-[0-9]+)?$"


def _entry(path: Any, manifest: Any) -> dict[str, Any]:
    return {**manifest.to_dict(), "path": str(path), "size": path.stat().st_size}


@routes.get("/api/v1/backups")
@requires("cluster")
async def list_backups(request: web.Request) -> web.Response:
    backups = service(request, "backups")
    entries = await asyncio.to_thread(backups.entries)
    return json_response({"node_id": backups.node.node_id, "backups": entries})


@routes.post("/api/v1/backups")
@requires("cluster")
async def create_backup(request: web.Request) -> web.Response:
    data = await body(request, "BackupRequest", optional=True) or {}
    path, manifest = await service(request, "backups").create(data.get("type"))
    return json_response(
        _entry(path, manifest),
        status=201,
        headers={"Location": f"/api/v1/backups/{manifest.id}"},
    )


@routes.get("/api/v1/backups/{backup_id}")
@requires("cluster")
async def get_backup(request: web.Request) -> web.Response:
    from caxton.backup.archive import read_manifest

    path = service(request, "backups").path_of(request.match_info["backup_id"])
    manifest = await asyncio.to_thread(read_manifest, path)
    return json_response(_entry(path, manifest))


@routes.get("/api/v1/backups/{backup_id}/archive")
@requires("cluster")
async def download_backup(request: web.Request) -> web.StreamResponse:
    path = service(request, "backups").path_of(request.match_info["backup_id"])
    return web.FileResponse(
        path,
        headers={
            "Content-Type": "application/gzip",
            "Content-Disposition": f'attachment; filename="{path.name}"',
        },
    )


@routes.post("/api/v1/backups/{backup_id}/verify")
@requires("cluster")
async def verify_backup_route(request: web.Request) -> web.Response:
    path = service(request, "backups").path_of(request.match_info["backup_id"])
    manifest = await asyncio.to_thread(verify_backup, path)
    return json_response({**_entry(path, manifest), "verified": True})


@routes.delete("/api/v1/backups/{backup_id}")
@requires("cluster")
async def delete_backup(request: web.Request) -> web.Response:
    path = service(request, "backups").path_of(request.match_info["backup_id"])
    await asyncio.to_thread(path.unlink)
    return web.Response(status=204)


@routes.post("/api/v1/cluster/backups")
@requires("cluster")
async def create_cluster_snapshot(request: web.Request) -> web.Response:
    """Every reachable node's backup at once, in one archive written to ``dest`` by this
    node (a directory on this node's host, or ``s3://BUCKET/PREFIX``)."""
    from caxton.backup.snapshot import take_snapshot

    data = await body(request, "ClusterBackupRequest")
    _check_snapshot_dest(data["dest"])
    node = request.config_dict[NODE]
    if getattr(node, "cluster", None) is None:
        raise Conflict(
            f"node {node.node_id} is not part of a cluster: back it up with "
            f"`caxton backup create` (POST /api/v1/backups)"
        )
    manifest = await take_snapshot(node.cluster, data["dest"], data.get("type", "full"))
    return json_response(manifest, status=201)


def _check_snapshot_dest(dest: str) -> None:
    """A directory named over the API must be absolute: a relative one would land in
    whatever directory the node happened to start in (``caxton cluster backup`` sends
    its --dest resolved on the caller's side)."""
    from caxton.backup.destinations import DirectoryDestination, scheme_of

    if scheme_of(dest) == "dir" and not DirectoryDestination(dest).root.is_absolute():
        raise ValidationError(
            f"dest {dest!r} is a relative path: give an absolute directory on the node's host "
            f"or s3://BUCKET/PREFIX"
        )


# -------------------------------------------------------------------------
# The OpenAPI document
# -------------------------------------------------------------------------


def _schemas() -> dict[str, Any]:
    backup = object_schema(
        {
            "id": {"type": "string", "pattern": _ID_PATTERN},
            "node_id": {"type": "string"},
            "type": {"type": "string", "enum": list(BACKUP_TYPES)},
            "created_at": {"type": "number", "description": "Unix time, seconds"},
            "caxton_version": {"type": "string"},
            "sqlite_version": {"type": "string"},
            "schema_versions": {"type": "object"},
            "agents": {"type": "integer", "minimum": 0},
            "database_size": {"type": "integer", "minimum": 0},
            "database_sha256": {"type": "string"},
            "note": {"type": "string"},
            "path": {"type": "string", "description": "The file on the node"},
            "size": {"type": "integer", "minimum": 0, "description": "Compressed bytes"},
            "error": {"type": "string", "description": "Why the file cannot be read"},
        },
        ("id",),
        closed=False,
    )
    return {
        "BackupRequest": object_schema(
            {"type": {"type": "string", "enum": list(BACKUP_TYPES)}}, (), closed=True
        ),
        "Backup": backup,
        "ClusterBackupRequest": object_schema(
            {
                "dest": {
                    **string_schema(4096),
                    "description": "A directory on this node's host, or s3://BUCKET/PREFIX",
                },
                "type": {"type": "string", "enum": list(BACKUP_TYPES)},
            },
            ("dest",),
        ),
        "ClusterSnapshot": object_schema(
            {
                "id": {"type": "string"},
                "created_at": {"type": "number"},
                "coordinator": {"type": "string"},
                "cluster": {"type": "object"},
                "backups": {"type": "object", "description": "node id -> backup manifest"},
                "failed": {"type": "object", "description": "node id -> why it has none"},
                "location": {"type": "string"},
            },
            ("id", "backups", "failed", "location"),
            closed=False,
        ),
        "BackupList": object_schema(
            {
                "node_id": {"type": "string"},
                "backups": {"type": "array", "items": schema_ref("Backup")},
            },
            ("node_id", "backups"),
            closed=False,
        ),
    }


def _paths() -> dict[str, Any]:
    backup_id = {
        "name": "backup_id",
        "in": "path",
        "required": True,
        "schema": string_schema(64),
    }
    archive = operation(
        "downloadBackup",
        "The backup file (gzip-compressed tar: manifest.json, state.db)",
        "cluster",
        {200: None},
        (400, 404),
        parameters=[backup_id],
        tag="backups",
    )
    archive["responses"]["200"]["content"] = {
        "application/gzip": {"schema": {"type": "string", "format": "binary"}}
    }
    return {
        "/api/v1/backups": {
            "get": operation(
                "listBackups",
                "The node's backups, oldest first, with their manifests",
                "cluster",
                {200: "BackupList"},
                tag="backups",
            ),
            "post": operation(
                "createBackup",
                "Back up the node's state store now, online (SQLite online backup API)",
                "cluster",
                {201: "Backup"},
                (400, 409, 422),
                body="BackupRequest",
                body_required=False,
                tag="backups",
            ),
        },
        "/api/v1/backups/{backup_id}": {
            "get": operation(
                "getBackup",
                "One backup's manifest",
                "cluster",
                {200: "Backup"},
                (400, 404, 422),
                parameters=[backup_id],
                tag="backups",
            ),
            "delete": operation(
                "deleteBackup",
                "Delete one backup file",
                "cluster",
                {204: None},
                (400, 404),
                parameters=[backup_id],
                tag="backups",
            ),
        },
        "/api/v1/backups/{backup_id}/archive": {"get": archive},
        "/api/v1/cluster/backups": {
            "post": operation(
                "createClusterSnapshot",
                "Back up every reachable node at once into one archive at dest",
                "cluster",
                {201: "ClusterSnapshot"},
                (400, 404, 409, 422, 502),
                body="ClusterBackupRequest",
                tag="backups",
            )
        },
        "/api/v1/backups/{backup_id}/verify": {
            "post": operation(
                "verifyBackup",
                "Check a backup: manifest, sha256 and PRAGMA integrity_check",
                "cluster",
                {200: "Backup"},
                (400, 404, 422),
                parameters=[backup_id],
                tag="backups",
            )
        },
    }


def extend_openapi(document: dict[str, Any]) -> dict[str, Any]:
    """Add the backup operations and schemas to ``document``; return it."""
    document["paths"].update(_paths())
    document["components"]["schemas"].update(_schemas())
    return document
