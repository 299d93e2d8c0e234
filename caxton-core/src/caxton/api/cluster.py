"""The cluster endpoints under ``/api/v1/cluster/`` and their part of the OpenAPI document.

A node that does not cluster answers as a cluster of one: itself, alive, healthy; leave
and remove are refused (409). :func:`extend_openapi` adds these operations and their
schemas to the document :func:`caxton.api.openapi.build_openapi` builds.

:func:`refuse_writes_in_partition` is the middleware that refuses routes changing
cluster state (deploy, update, remove permissions) while the node is not read-write
(:class:`~caxton.errors.ReadOnlyMode`, 503; :mod:`caxton.cluster.partition`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from caxton.api.common import body, clustered, query
from caxton.api.common import flag as _flag
from caxton.api.keys import NODE
from caxton.api.openapi import (
    MAX_WAIT_MS,
    integer_schema,
    object_schema,
    operation,
    schema_ref,
    string_schema,
)
from caxton.api.permissions import required_permission, requires
from caxton.api.responses import json_response
from caxton.cluster import wire
from caxton.cluster.auth import problems_of, security_summary
from caxton.cluster.partition import WRITE_PERMISSIONS, partition_report, verify_cluster
from caxton.drivers.partition import PartitionMode
from caxton.errors import Conflict, MinorityPartition, NotFound
from caxton.units import format_address

__all__ = ["extend_openapi", "refuse_writes_in_partition", "routes"]

routes = web.RouteTableDef()

#: ``drain_timeout_ms`` of a leave that gives none.
DEFAULT_DRAIN_MS = 60_000
#: Events ``GET /api/v1/cluster/events`` returns unless ``limit`` says otherwise.
DEFAULT_EVENTS = 100
#: Seconds between keep-alive lines of the event stream.
KEEPALIVE = 15.0

_NODE_ID = {"type": "string", "minLength": 1, "maxLength": 255}
_LIMIT = integer_schema(0, 1000, f"Most recent events to return (default {DEFAULT_EVENTS})")
_FOLLOW = {"type": "boolean", "description": "Keep the stream open for live events"}
_DEEP = {"type": "boolean", "description": "Compare registries, replicas and stores"}


def _node(request: web.Request) -> Any:
    return request.config_dict[NODE]


def _cluster(request: web.Request) -> Any:
    """The node's cluster service, or None when the node does not cluster."""
    return getattr(_node(request), "cluster", None)


def _standalone_member(node: Any) -> dict[str, Any]:
    from caxton.api.resources import memory_rss_bytes

    agents = len(node.agents) if node.agents is not None else 0
    return {
        "node_id": node.node_id,
        "status": "alive",
        "address": None,
        "incarnation": 0,
        "agents": agents,
        "cpu": None,
        "memory": memory_rss_bytes(),
        "version": node.version,
        "wire": [wire.OLDEST_VERSION, wire.MESSAGE_VERSION],
        "region": node.config["node"]["region"] or None,
        "zone": node.config["node"]["zone"] or None,
        "labels": dict(node.config["node"]["labels"]),
        "api": format_address(node.api_address) if node.api_address else None,
        "local": True,
    }


@routes.get("/api/v1/cluster/members")
@requires("read")
async def cluster_members(request: web.Request) -> web.Response:
    cluster = _cluster(request)
    members = cluster.members() if cluster is not None else [_standalone_member(_node(request))]
    return json_response({"members": members})


@routes.get("/api/v1/cluster/status")
@requires("read")
async def cluster_status(request: web.Request) -> web.Response:
    cluster = _cluster(request)
    if cluster is not None:
        return json_response(cluster.status())
    node = _node(request)
    return json_response(
        {
            "node_id": node.node_id,
            "status": "HEALTHY",
            "partition": "standalone",
            "mode": "read-write",
            "reason": "this node does not cluster",
            "queue_writes": False,
            "nodes_reachable": 1,
            "nodes_known": 1,
            "members": {"alive": 1},
            "agents_total": len(node.agents) if node.agents is not None else 0,
            "registry_version": None,
            "transport": None,
            "membership": None,
            "address": None,
            "counts": {},
            "queued_writes": 0,
        }
    )


@routes.get("/api/v1/cluster/partition")
@requires("read")
async def cluster_detect_partition(request: web.Request) -> web.Response:
    cluster = _cluster(request)
    if cluster is not None:
        return json_response(partition_report(cluster))
    node = _node(request)
    return json_response(
        {
            "node_id": node.node_id,
            "partitioned": False,
            "partitions": [{"nodes": [node.node_id], "majority": True, "local": True}],
            "quorum": 1,
            "mode": "read-write",
            "reason": "this node does not cluster",
            "queued_writes": 0,
        }
    )


@routes.get("/api/v1/cluster/agents")
@requires("read")
async def cluster_agents(request: web.Request) -> web.Response:
    cluster = _cluster(request)
    if cluster is not None:
        return json_response({"agents": cluster.agents()})
    node = _node(request)
    agents = node.agents.list() if node.agents is not None else []
    return json_response(
        {
            "agents": [
                {
                    "name": a.name,
                    "id": a.id,
                    "node_id": node.node_id,
                    "state": a.state.value,
                    "capabilities": [],
                    "version": 0,
                }
                for a in sorted(agents, key=lambda a: a.name)
            ]
        }
    )


@routes.get("/api/v1/cluster/events")
@requires("read")
async def cluster_events(request: web.Request) -> web.Response:
    limit = query(request, "limit", _LIMIT)
    cluster = _cluster(request)
    events = cluster.recent_events(DEFAULT_EVENTS if limit is None else limit) if cluster else []
    return json_response({"events": [e.to_dict() for e in events]})


@routes.get("/api/v1/cluster/events/stream")
@requires("read")
async def cluster_event_stream(request: web.Request) -> web.StreamResponse:
    """Newline-delimited JSON: recent events, then (``follow``) live ones until the
    client disconnects or the node stops; an empty line every 15 s keeps it open."""
    limit = query(request, "limit", _LIMIT)
    follow = _flag(request, "follow")
    cluster = _cluster(request)
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    if cluster is None:
        line = {
            "at": time.time(),
            "level": "info",
            "kind": "standalone",
            "node_id": _node(request).node_id,
            "text": "this node does not cluster: no membership events",
        }
        await response.write(json.dumps(line).encode() + b"\n")
        await response.write_eof()
        return response
    async with cluster.watch() as queue:
        for event in cluster.recent_events(DEFAULT_EVENTS if limit is None else limit):
            await response.write(json.dumps(event.to_dict()).encode() + b"\n")
        while follow:
            try:
                event = await asyncio.wait_for(queue.get(), KEEPALIVE)
            except asyncio.TimeoutError:
                await response.write(b"\n")
                continue
            await response.write(json.dumps(event.to_dict()).encode() + b"\n")
            if event.kind == "closed":
                break
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response


@routes.get("/api/v1/cluster/members/{node_id}/ping")
@requires("read")
async def cluster_ping(request: web.Request) -> web.Response:
    node_id = request.match_info["node_id"]
    cluster = _cluster(request)
    if cluster is not None:
        return json_response(await cluster.ping(node_id))
    node = _node(request)
    if node_id != node.node_id:
        raise NotFound(f"No member named {node_id!r}; this node does not cluster")
    return json_response(
        {
            "node_id": node_id,
            "status": "alive",
            "address": None,
            "reachable": True,
            "gossip_rtt_ms": 0.0,
            "transport_rtt_ms": 0.0,
        }
    )


@routes.get("/api/v1/cluster/auth")
@requires("read")
async def cluster_verify_auth(request: web.Request) -> web.Response:
    cluster = _cluster(request)
    if cluster is not None:
        return json_response(await cluster.verify_auth())
    node = _node(request)
    summary = security_summary(node.node_id, node.config)
    problems = problems_of(summary)
    return json_response(
        {
            "agree": not problems,
            "nodes": [{**summary, "reachable": True, "agrees": not problems, "problems": problems}],
        }
    )


@routes.get("/api/v1/cluster/verify")
@requires("read")
async def cluster_verify(request: web.Request) -> web.Response:
    from caxton.api.diagnostics import deep_verification
    from caxton.diagnostics.gather import check_member

    cluster, node = _cluster(request), _node(request)
    only = query(request, "node", _NODE_ID)
    deep = _flag(request, "deep") or only is not None  # --node verifies that one deeply
    if only is not None:
        check_member(node, only)
    shallow = await verify_cluster(cluster) if cluster is not None else _verify_alone(node)
    if deep:
        return json_response(await deep_verification(node, shallow, only))
    return json_response(shallow)


def _verify_alone(node: Any) -> dict[str, Any]:
    """``cluster verify`` on a node that does not cluster: itself, consistent."""
    return {
        "consistent": True,
        "nodes": [
            {
                "node_id": node.node_id,
                "reachable": True,
                "members_alive": 1,
                "registry_version": None,
                "agrees": True,
                "problems": [],
            }
        ],
    }


@routes.post("/api/v1/cluster/leave")
@requires("cluster")
async def cluster_leave(request: web.Request) -> web.Response:
    data = await body(request, "ClusterLeave", optional=True) or {}
    node = _node(request)
    cluster = clustered(request, "leave one")
    drain_ms = int(data.get("drain_timeout_ms", DEFAULT_DRAIN_MS))
    target = data.get("node") or node.node_id
    if target != node.node_id:
        await cluster.remote_leave(target, drain_ms / 1000)
        return json_response({"node_id": target, "status": "leaving", "remaining": None})
    if cluster.leaving:
        raise Conflict(f"node {node.node_id} is already leaving the cluster")
    remaining = await cluster.leave(drain_ms / 1000)
    cluster.stop_node_soon(delay=0.2)  # once this answer is on its way; the process exits
    drained = cluster.drain_report.to_dict() if cluster.drain_report is not None else {}
    return json_response(
        {
            "node_id": node.node_id,
            "status": "left",
            "remaining": remaining,
            "moved": drained.get("moved", {}),
            "stranded": drained.get("stranded", {}),
        }
    )


@routes.post("/api/v1/cluster/remove")
@requires("cluster")
async def cluster_remove(request: web.Request) -> web.Response:
    data = await body(request, "ClusterRemove")
    cluster = clustered(request, "remove a member")
    cluster.partition.check_write(f"removing member {data['node']}")
    member = cluster.remove(data["node"])
    return json_response({"node_id": member.node_id, "status": member.status.value})


# -------------------------------------------------------------------------
# The OpenAPI document
# -------------------------------------------------------------------------


def _schemas() -> dict[str, Any]:
    nullable_string = {"type": "string", "nullable": True}
    nullable_integer = {"type": "integer", "nullable": True}
    nullable_number = {"type": "number", "nullable": True}
    member = object_schema(
        {
            "node_id": {"type": "string"},
            "status": {"type": "string", "enum": ["alive", "suspect", "failed", "left"]},
            "address": nullable_string,
            "incarnation": {"type": "integer"},
            "agents": nullable_integer,
            "cpu": {**nullable_number, "description": "CPU use, percent of the host"},
            "memory": {**nullable_integer, "description": "Resident memory, bytes"},
            "version": {**nullable_string, "description": "The Caxton release it runs"},
            "wire": {
                "type": "array",
                "items": {"type": "integer"},
                "description": "Oldest and newest cluster wire protocol versions it speaks",
            },
            "region": nullable_string,
            "zone": nullable_string,
            "labels": {"type": "object"},
            "api": nullable_string,
            "local": {"type": "boolean"},
        },
        ("node_id", "status", "address", "agents", "cpu", "memory"),
        closed=False,
    )
    event = object_schema(
        {
            "at": {"type": "number", "description": "Unix time, seconds"},
            "level": {"type": "string", "enum": ["debug", "info", "warning"]},
            "kind": {"type": "string"},
            "node_id": {"type": "string"},
            "text": {"type": "string"},
            "details": {"type": "object"},
        },
        ("at", "level", "kind", "text"),
        closed=False,
    )
    return {
        "ClusterMember": member,
        "ClusterMembers": object_schema(
            {"members": {"type": "array", "items": schema_ref("ClusterMember")}},
            ("members",),
            closed=False,
        ),
        "ClusterStatus": object_schema(
            {
                "node_id": {"type": "string"},
                "status": {"type": "string", "enum": ["HEALTHY", "DEGRADED"]},
                "partition": {"type": "string", "enum": ["majority", "minority", "standalone"]},
                "mode": {"type": "string", "enum": ["read-write", "read-only", "local-only"]},
                "reason": {"type": "string"},
                "nodes_reachable": {"type": "integer", "minimum": 0},
                "nodes_known": {"type": "integer", "minimum": 0},
                "members": {"type": "object"},
                "agents_total": {"type": "integer", "minimum": 0},
                "queued_writes": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Messages queued for nodes out of reach, replayed on heal",
                },
            },
            ("node_id", "status", "mode", "nodes_reachable", "nodes_known"),
            closed=False,
        ),
        "ClusterPartition": object_schema(
            {
                "node_id": {"type": "string"},
                "partitioned": {
                    "type": "boolean",
                    "description": "Some known members are out of this node's reach",
                },
                "partitions": {
                    "type": "array",
                    "items": object_schema(
                        {
                            "nodes": {"type": "array", "items": {"type": "string"}},
                            "majority": {"type": "boolean"},
                            "local": {
                                "type": "boolean",
                                "description": "This node's side",
                            },
                        },
                        ("nodes", "majority", "local"),
                    ),
                },
                "quorum": {"type": "integer", "minimum": 1},
                "mode": {"type": "string", "enum": ["read-write", "read-only", "local-only"]},
                "reason": {"type": "string"},
                "queued_writes": {"type": "integer", "minimum": 0},
            },
            ("node_id", "partitioned", "partitions", "mode", "queued_writes"),
            closed=False,
        ),
        "ClusterAgent": object_schema(
            {
                "name": {"type": "string"},
                "id": {"type": "string"},
                "node_id": {"type": "string"},
                "state": {"type": "string"},
                "capabilities": {"type": "array", "items": {"type": "string"}},
                "version": {"type": "integer"},
            },
            ("name", "node_id", "state"),
            closed=False,
        ),
        "ClusterAgents": object_schema(
            {"agents": {"type": "array", "items": schema_ref("ClusterAgent")}},
            ("agents",),
            closed=False,
        ),
        "ClusterEvent": event,
        "ClusterEvents": object_schema(
            {"events": {"type": "array", "items": schema_ref("ClusterEvent")}},
            ("events",),
            closed=False,
        ),
        "ClusterPing": object_schema(
            {
                "node_id": {"type": "string"},
                "status": {"type": "string"},
                "address": nullable_string,
                "reachable": {"type": "boolean"},
                "gossip_rtt_ms": nullable_number,
                "transport_rtt_ms": nullable_number,
            },
            ("node_id", "status"),
            closed=False,
        ),
        "ClusterAuth": object_schema(
            {
                "agree": {"type": "boolean"},
                "nodes": {"type": "array", "items": {"type": "object"}},
            },
            ("agree", "nodes"),
            closed=False,
        ),
        "ClusterVerify": object_schema(
            {
                "consistent": {
                    "type": "boolean",
                    "description": "Every reachable member agrees on members and registry",
                },
                "nodes": {"type": "array", "items": {"type": "object"}},
            },
            ("consistent", "nodes"),
            closed=False,
        ),
        "ClusterLeave": object_schema(
            {
                "node": string_schema(255, description="The node to leave (default: this one)"),
                "drain_timeout_ms": integer_schema(
                    0, MAX_WAIT_MS, "Wait for queued messages first (default 60000)"
                ),
            }
        ),
        "ClusterLeaveResult": object_schema(
            {
                "node_id": {"type": "string"},
                "status": {"type": "string", "enum": ["left", "leaving"]},
                "remaining": nullable_integer,
            },
            ("node_id", "status"),
            closed=False,
        ),
        "ClusterRemove": object_schema(
            {
                "node": string_schema(255, description="The failed member to remove"),
                "force": {"type": "boolean", "enum": [True]},
            },
            ("node", "force"),
        ),
        "ClusterRemoveResult": object_schema(
            {"node_id": {"type": "string"}, "status": {"type": "string"}},
            ("node_id", "status"),
            closed=False,
        ),
    }


def _paths() -> dict[str, Any]:
    limit = {"name": "limit", "in": "query", "required": False, "schema": _LIMIT}
    follow = {"name": "follow", "in": "query", "required": False, "schema": _FOLLOW}
    stream = operation(
        "clusterEventStream",
        "Membership, registry and mode events as newline-delimited JSON (follow: live)",
        "read",
        {200: None},
        (400,),
        parameters=[limit, follow],
        tag="cluster",
    )
    stream["responses"]["200"]["content"] = {"application/x-ndjson": {"schema": {"type": "string"}}}
    return {
        "/api/v1/cluster/members": {
            "get": operation(
                "clusterMembers",
                "Members with status, address and gossiped load (NODE-ID STATUS ADDRESS ...)",
                "read",
                {200: "ClusterMembers"},
                tag="cluster",
            )
        },
        "/api/v1/cluster/status": {
            "get": operation(
                "clusterStatus",
                "HEALTHY/DEGRADED and READ-WRITE/READ-ONLY, from the partition decision",
                "read",
                {200: "ClusterStatus"},
                tag="cluster",
            )
        },
        "/api/v1/cluster/partition": {
            "get": operation(
                "clusterDetectPartition",
                "The partitions this node can tell apart: its side and the members it "
                "cannot reach, with its mode and queued writes",
                "read",
                {200: "ClusterPartition"},
                tag="cluster",
            )
        },
        "/api/v1/cluster/agents": {
            "get": operation(
                "clusterAgents",
                "Every agent of the cluster with its node (the agent registry)",
                "read",
                {200: "ClusterAgents"},
                tag="cluster",
            )
        },
        "/api/v1/cluster/events": {
            "get": operation(
                "clusterEvents",
                "Recent membership, registry and mode events",
                "read",
                {200: "ClusterEvents"},
                (400,),
                parameters=[limit],
                tag="cluster",
            )
        },
        "/api/v1/cluster/events/stream": {"get": stream},
        "/api/v1/cluster/members/{node_id}/ping": {
            "get": operation(
                "clusterPing",
                "Probe a member: SWIM ping and transport round trip, ms",
                "read",
                {200: "ClusterPing"},
                (404,),
                parameters=[
                    {
                        "name": "node_id",
                        "in": "path",
                        "required": True,
                        "description": "The member's node id",
                        "schema": _NODE_ID,
                    }
                ],
                tag="cluster",
            )
        },
        "/api/v1/cluster/auth": {
            "get": operation(
                "clusterVerifyAuth",
                "Do the members' certificates and gossip keys agree with this node's?",
                "read",
                {200: "ClusterAuth"},
                tag="cluster",
            )
        },
        "/api/v1/cluster/verify": {
            "get": operation(
                "clusterVerify",
                "Do the reachable members agree on the membership and the registry versions? "
                "deep (or node): also their registries, replicas and state stores",
                "read",
                {200: "ClusterVerify"},
                (400, 404, 502, 503, 504),
                parameters=[
                    {"name": "deep", "in": "query", "required": False, "schema": _DEEP},
                    {"name": "node", "in": "query", "required": False, "schema": _NODE_ID},
                ],
                tag="cluster",
            )
        },
        "/api/v1/cluster/leave": {
            "post": operation(
                "clusterLeave",
                "Drain, announce the leave and stop this node (or the one named)",
                "cluster",
                {200: "ClusterLeaveResult"},
                (400, 404, 408, 409, 413, 503),
                body="ClusterLeave",
                body_required=False,
                tag="cluster",
            )
        },
        "/api/v1/cluster/remove": {
            "post": operation(
                "clusterRemove",
                "Force a failed member out (every node records it as left)",
                "cluster",
                {200: "ClusterRemoveResult"},
                (400, 404, 408, 409, 413, 503),
                body="ClusterRemove",
                tag="cluster",
            )
        },
    }


def extend_openapi(document: dict[str, Any]) -> dict[str, Any]:
    """Add the cluster operations and schemas to ``document``; return it."""
    document["paths"].update(_paths())
    document["components"]["schemas"].update(_schemas())
    return document


@web.middleware
async def refuse_writes_in_partition(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Refuse routes that change cluster state while this node is not read-write; with
    ``partition.degraded_mode`` off, refuse agent reads and messages too (the cluster's
    own routes, metrics and health stay, to see what is going on)."""
    permission = required_permission(request)
    node = request.config_dict[NODE]
    cluster = getattr(node, "cluster", None)
    if cluster is None or cluster.partition.mode is PartitionMode.READ_WRITE:
        return await handler(request)
    action = getattr(request.match_info.handler, "__name__", request.method).replace("_", " ")
    if permission in WRITE_PERMISSIONS:
        cluster.partition.check_write(action)
    elif (
        permission in STOPPED_WHEN_NOT_DEGRADED
        and not node.config["partition"]["degraded_mode"]
        and not request.path.startswith("/api/v1/cluster")
    ):
        raise MinorityPartition(
            f"{action} refused: node {cluster.node_id} is in a minority partition and "
            f"partition.degraded_mode is off",
            details=f"{action} refused: node {cluster.node_id} is in a minority partition "
            f"and serves no agent traffic until it heals (partition.degraded_mode = false); "
            f"use a node of the majority (`caxton cluster detect-partition` shows them)",
        )
    return await handler(request)


#: What a minority node stops serving when ``partition.degraded_mode`` is off.
STOPPED_WHEN_NOT_DEGRADED = frozenset({"read", "send", "impersonate"})
