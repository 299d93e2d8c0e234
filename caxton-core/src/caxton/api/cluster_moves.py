"""``/api/v1/cluster/rebalance``, ``/drain`` and ``/nodes``: moving agents between nodes.

- ``POST /api/v1/cluster/rebalance``: plan live moves with the placement driver
  (:mod:`caxton.cluster.rebalance`); ``dry_run`` answers the plan, otherwise the moves
  are carried out (``max_parallel`` at once) and the answer says what moved.
- ``POST /api/v1/cluster/drain``: move every agent of this node (or ``node``) to the
  others; the answer names those that could not move in time (:meth:`Moves.drain`).
- ``POST /api/v1/cluster/nodes``: bring a node in (``caxton cluster add-node``): this
  node joins the one at ``address`` (started with ``--cluster`` and no seeds, or a
  member of another cluster view) and answers once it is an alive member.

Every route needs the ``cluster`` permission and refuses in a minority partition.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from caxton.api.common import body, clustered
from caxton.api.keys import IDENTITY, NODE, REQUEST_ID
from caxton.api.openapi import MAX_WAIT_MS, integer_schema, object_schema, operation, string_schema
from caxton.api.permissions import requires
from caxton.api.responses import json_response
from caxton.cluster import rebalance
from caxton.cluster.agent_ops import Caller
from caxton.cluster.placement import NodeUnreachable, RemoteError, strategy_named
from caxton.errors import TransportError, ValidationError
from caxton.units import parse_address

__all__ = ["extend_openapi", "routes"]

routes = web.RouteTableDef()

#: Default ``timeout_ms`` of a drain.
DEFAULT_DRAIN_MS = 60_000
#: Seconds ``add-node`` waits for the new member to be alive.
JOIN_TIMEOUT = 15.0
MAX_PARALLEL = 64


@routes.post("/api/v1/cluster/rebalance")
@requires("cluster")
async def cluster_rebalance(request: web.Request) -> web.Response:
    data = await body(request, "ClusterRebalance", optional=True) or {}
    node = request.config_dict[NODE]
    clustered(request, "rebalance")
    strategy = data.get("strategy")
    strategy_named(node, strategy)  # an unknown strategy is refused before anything moves
    report = rebalance.plan(node, strategy)
    if not data.get("dry_run"):
        node.cluster.partition.check_write("rebalancing the cluster")
        caller = Caller.of(request.get(IDENTITY), request.get(REQUEST_ID), request.remote)
        parallel = int(data.get("max_parallel") or rebalance.DEFAULT_PARALLEL)
        report = await rebalance.execute(node, report, caller, max_parallel=parallel)
    return json_response({**report.to_dict(), "dry_run": bool(data.get("dry_run"))})


@routes.post("/api/v1/cluster/drain")
@requires("cluster")
async def cluster_drain(request: web.Request) -> web.Response:
    data = await body(request, "ClusterDrain", optional=True) or {}
    node = request.config_dict[NODE]
    cluster = clustered(request, "drain")
    timeout = int(data.get("timeout_ms", DEFAULT_DRAIN_MS)) / 1000
    target = data.get("node") or node.node_id
    cluster.partition.check_write(f"draining node {target}")
    if target == node.node_id:
        return json_response((await cluster.moves.drain(timeout)).to_dict())
    member = cluster._live(target)
    if member is None:
        raise NodeUnreachable(f"node '{target}' is not a reachable member")
    sealed = cluster.failover.trust.seal({"timeout": timeout})
    try:
        answer = await cluster._control(member.address, timeout + 15.0, "drain", sealed)
    except TransportError as exc:
        raise NodeUnreachable(f"node '{target}' did not answer: {exc}") from None
    if isinstance(answer, list) and len(answer) == 2 and answer[0] == "ok":
        return json_response(answer[1])
    if isinstance(answer, list) and len(answer) == 5 and answer[0] == "error":
        status = answer[1] if isinstance(answer[1], int) else 502
        raise RemoteError(status, str(answer[2]), f"node '{target}': {answer[3]}", answer[4])
    raise RemoteError(502, "Bad answer", f"node '{target}' gave a malformed answer")


@routes.post("/api/v1/cluster/nodes")
@requires("cluster")
async def cluster_add_node(request: web.Request) -> web.Response:
    data = await body(request, "ClusterAddNode")
    cluster = clustered(request, "add a node")
    cluster.partition.check_write("adding a node")
    try:
        address = parse_address(data["address"])
    except ValueError as exc:
        raise ValidationError(f"address: {exc}") from None
    before = {m.node_id for m in cluster.membership.members()}
    for member in cluster.membership.members():
        if member.address == address and cluster._live(member.node_id) is not None:
            return json_response(
                {"node_id": member.node_id, "status": "member", "address": data["address"]}
            )
    try:
        answered = await cluster.membership.join([address])
    except TransportError:
        answered = 0
    if not answered:
        raise NodeUnreachable(
            f"no Caxton node answered at {data['address']}: start it with "
            f"`caxton server start --cluster --bind-addr {data['address']}` (same cluster "
            f"keys or certificates) and try again"
        )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + JOIN_TIMEOUT
    while loop.time() < deadline:
        for member in cluster.membership.members():
            new = member.node_id not in before or member.address == address
            if new and cluster._live(member.node_id) is not None:
                return json_response(
                    {"node_id": member.node_id, "status": "joined", "address": data["address"]}
                )
        await asyncio.sleep(0.05)
    raise NodeUnreachable(f"the node at {data['address']} answered but did not join in time")


def extend_openapi(document: dict[str, Any]) -> dict[str, Any]:
    """Add the rebalance, drain and add-node operations and schemas; return it."""
    moves = {"type": "array", "items": {"type": "object"}}
    document["components"]["schemas"].update(
        {
            "ClusterRebalance": object_schema(
                {
                    "strategy": string_schema(
                        255, description="Placement strategy driver (default: the node's)"
                    ),
                    "dry_run": {"type": "boolean", "description": "Answer the plan only"},
                    "max_parallel": integer_schema(1, MAX_PARALLEL, "Moves at once (default 4)"),
                }
            ),
            "ClusterRebalanceResult": object_schema(
                {
                    "strategy": {"type": "string"},
                    "dry_run": {"type": "boolean"},
                    "plan": moves,
                    "moved": moves,
                    "failed": {"type": "object", "additionalProperties": {"type": "string"}},
                    "seconds": {"type": "number"},
                    "before": {"type": "object"},
                    "after": {"type": "object"},
                },
                ("strategy", "plan", "moved", "failed"),
                closed=False,
            ),
            "ClusterDrain": object_schema(
                {
                    "node": string_schema(255, description="The node to drain (default: this)"),
                    "timeout_ms": integer_schema(
                        0, MAX_WAIT_MS, "Give up on the agents not moved by then (default 60000)"
                    ),
                }
            ),
            "ClusterDrainResult": object_schema(
                {
                    "node_id": {"type": "string"},
                    "moved": {"type": "object", "additionalProperties": {"type": "string"}},
                    "stranded": {"type": "object", "additionalProperties": {"type": "string"}},
                    "seconds": {"type": "number"},
                },
                ("node_id", "moved", "stranded"),
                closed=False,
            ),
            "ClusterAddNode": object_schema(
                {"address": string_schema(255, description="HOST:PORT of its cluster port")},
                ("address",),
            ),
            "ClusterAddNodeResult": object_schema(
                {
                    "node_id": {"type": "string"},
                    "status": {"type": "string", "enum": ["joined", "member"]},
                    "address": {"type": "string"},
                },
                ("node_id", "status"),
                closed=False,
            ),
        }
    )
    document["paths"].update(
        {
            "/api/v1/cluster/rebalance": {
                "post": operation(
                    "clusterRebalance",
                    "Plan live moves that even out the agents, and carry them out",
                    "cluster",
                    {200: "ClusterRebalanceResult"},
                    (400, 404, 408, 409, 413, 503),
                    body="ClusterRebalance",
                    body_required=False,
                    tag="cluster",
                )
            },
            "/api/v1/cluster/drain": {
                "post": operation(
                    "clusterDrain",
                    "Move every agent of a node to the others (it stays a member)",
                    "cluster",
                    {200: "ClusterDrainResult"},
                    (400, 408, 409, 413, 503),
                    body="ClusterDrain",
                    body_required=False,
                    tag="cluster",
                )
            },
            "/api/v1/cluster/nodes": {
                "post": operation(
                    "clusterAddNode",
                    "Bring the node listening at address into the cluster",
                    "cluster",
                    {200: "ClusterAddNodeResult"},
                    (400, 408, 409, 413, 503),
                    body="ClusterAddNode",
                    tag="cluster",
                )
            },
        }
    )
    return document
