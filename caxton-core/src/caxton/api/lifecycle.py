"""The runbook's whole-cluster procedures: stop every node, rebuild a node from its peers.

``POST /api/v1/cluster/stop`` (``caxton cluster stop --all``) stops every reachable
member in order and then the node asked (:mod:`caxton.cluster.shutdown`);
``POST /api/v1/cluster/rebuild`` (``caxton cluster rebuild --node N --from-peers``)
has node N take back, from its peers, the agents and state it lost with its data
directory (:mod:`caxton.cluster.rebuild`). Both need the ``cluster`` permission and are
written to the audit log; a node that does not cluster refuses both (409).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from caxton.api.common import body, clustered
from caxton.api.openapi import integer_schema, object_schema, operation, string_schema
from caxton.api.permissions import requires
from caxton.api.responses import json_response
from caxton.errors import Conflict, NotFound

__all__ = ["extend_openapi", "routes"]

routes = web.RouteTableDef()

#: ``drain_timeout_ms`` of a stop that gives none.
DEFAULT_DRAIN_MS = 30_000


#: What a single node does instead of a whole-cluster stop.
_STOP_ONE = "stop a single node with its service manager (systemctl stop caxton) or SIGTERM"


@routes.post("/api/v1/cluster/stop")
@requires("cluster")
async def cluster_stop(request: web.Request) -> web.Response:
    from caxton.cluster.shutdown import stop_cluster

    data = await body(request, "ClusterStop", optional=True) or {}
    cluster = clustered(request, "stop a cluster", _STOP_ONE)
    if cluster.stopping_all:
        raise Conflict(f"the cluster is already stopping (asked of node {cluster.node_id})")
    result = await stop_cluster(cluster, data.get("drain_timeout_ms", DEFAULT_DRAIN_MS) / 1000)
    if cluster.node_id in result["nodes"]:
        cluster.stop_node_soon(delay=0.2)  # last, once this answer is on its way
    return json_response(result)


@routes.post("/api/v1/cluster/rebuild")
@requires("cluster")
async def cluster_rebuild(request: web.Request) -> web.Response:
    from caxton.cluster.rebuild import REBUILD_TIMEOUT

    data = await body(request, "ClusterRebuild")
    cluster = clustered(request, "rebuild a node from its peers")
    target = data["node"]
    if target != cluster.node_id and cluster._live(target) is None:
        raise NotFound(
            f"node {target} is not a live member: start it (on its empty or fresh data "
            f"directory, joining the cluster), then rebuild it"
        )
    cluster.partition.check_write(f"rebuilding node {target}")
    report = await cluster.operations.ask(target, "rebuild", {}, REBUILD_TIMEOUT)
    return json_response(report)


# -------------------------------------------------------------------------
# The OpenAPI document
# -------------------------------------------------------------------------


def _schemas() -> dict[str, Any]:
    return {
        "ClusterStop": object_schema(
            {
                "drain_timeout_ms": integer_schema(
                    0,
                    600_000,
                    f"Wait this long for each node's queues (default {DEFAULT_DRAIN_MS})",
                )
            }
        ),
        "ClusterRebuild": object_schema(
            {"node": {**string_schema(255), "description": "The node to rebuild"}},
            ("node",),
        ),
        "ClusterRebuildResult": object_schema(
            {
                "node_id": {"type": "string"},
                "recovered": {
                    "type": "array",
                    "items": {"type": "object"},
                    "description": "Agents taken back: name, agent_id, generation, keys, from",
                },
                "skipped": {
                    "type": "array",
                    "items": {"type": "object"},
                    "description": "Agents left where they are: name, agent_id, reason",
                },
                "replicas_resent": {"type": "integer"},
                "registry_agents": {"type": "integer"},
            },
            ("node_id", "recovered", "skipped"),
            closed=False,
        ),
        "ClusterStopResult": object_schema(
            {
                "coordinator": {"type": "string"},
                "nodes": {
                    "type": "object",
                    "description": "node id -> agents, queued messages left, status",
                },
                "failed": {"type": "object", "description": "node id -> why it did not stop"},
            },
            ("coordinator", "nodes", "failed"),
            closed=False,
        ),
    }


def _paths() -> dict[str, Any]:
    return {
        "/api/v1/cluster/rebuild": {
            "post": operation(
                "clusterRebuild",
                "A node takes back from its peers the agents and state it lost with its "
                "data directory (fenced: never a stale owner)",
                "cluster",
                {200: "ClusterRebuildResult"},
                (400, 404, 408, 409, 413, 502, 503),
                body="ClusterRebuild",
                tag="cluster",
            )
        },
        "/api/v1/cluster/stop": {
            "post": operation(
                "clusterStop",
                "Stop every reachable node in order, this one last (drained, no failover)",
                "cluster",
                {200: "ClusterStopResult"},
                (400, 409, 413, 503),
                body="ClusterStop",
                body_required=False,
                tag="cluster",
            )
        },
    }


def extend_openapi(document: dict[str, Any]) -> dict[str, Any]:
    """Add the whole-cluster procedures and their schemas to ``document``; return it."""
    document["paths"].update(_paths())
    document["components"]["schemas"].update(_schemas())
    return document
