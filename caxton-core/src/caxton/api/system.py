"""Health, readiness, the OpenAPI document, queues, resources and emergency stop."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from caxton.api.common import body, query, service
from caxton.api.keys import CPU, NODE, OPENAPI
from caxton.api.openapi import DEAD_LETTER_QUERY
from caxton.api.permissions import public, requires
from caxton.api.resources import node_resources
from caxton.api.responses import json_response
from caxton.cluster.views import gather, local_view
from caxton.errors import ValidationError

__all__ = ["routes"]

routes = web.RouteTableDef()

#: How long ``POST /api/v1/queues/drain`` waits when the body gives no timeout, ms.
DEFAULT_DRAIN_MS = 60_000


@routes.get("/api/v1/health")
@public
async def health(request: web.Request) -> web.Response:
    return json_response({"status": "healthy"})


@routes.get("/health")
@public
async def liveness(request: web.Request) -> web.Response:
    return json_response({"status": "alive"})


def readiness_checks(node: Any) -> dict[str, bool]:
    """What must hold before a load balancer sends this node traffic."""
    checks = {
        "running": node.state == "running",
        "state_store": node.store is not None,
        "agents": node.agents is not None,
        "router": node.router is not None,
    }
    if node.join_addresses:
        membership = node.membership
        checks["cluster_joined"] = bool(membership is not None and len(membership.members()) > 1)
    cluster = getattr(node, "cluster", None)
    if cluster is not None:  # a leaving node takes no new messages (api.common)
        checks["not_leaving"] = not cluster.leaving
    return checks


@routes.get("/ready")
@public
async def readiness(request: web.Request) -> web.Response:
    node = request.config_dict[NODE]
    checks = readiness_checks(node)
    ready = all(checks.values())
    return json_response(
        {"status": "ready" if ready else "not-ready", "state": node.state, "checks": checks},
        status=200 if ready else 503,
    )


@routes.get("/api/v1/openapi.json")
@public
async def openapi(request: web.Request) -> web.Response:
    return json_response(request.config_dict[OPENAPI])


@routes.get("/api/v1/queues")
@requires("metrics")
async def queue_stats(request: web.Request) -> web.Response:
    stats = service(request, "router").queue_stats()
    cluster = getattr(request.config_dict[NODE], "cluster", None)
    # Messages held for nodes out of reach in a partition (caxton.cluster.partition).
    stats["queued_writes"] = cluster.partition.queued if cluster is not None else 0
    return json_response(stats)


@routes.get("/api/v1/queues/dead-letters")
@requires("read")
async def dead_letters(request: web.Request) -> web.Response:
    """What this node gave up on, with why: kept in its store across restarts; with
    ``scope=cluster``, what every reachable node gave up on, newest first."""
    params = {name: query(request, name, schema) for name, schema in DEAD_LETTER_QUERY.items()}
    service(request, "store")
    node = request.config_dict[NODE]
    args = {**params, "limit": params["limit"] or 100}
    if params["scope"] != "cluster":
        return json_response({"dead_letters": await local_view(node, "dead-letters", args)})
    answers, failed = await gather(node, "dead-letters", args)
    letters = [{**letter, "node_id": n} for n, found in answers.items() for letter in found]
    letters.sort(key=lambda letter: letter["at"], reverse=True)
    return json_response({"dead_letters": letters[: args["limit"]], "failed": failed})


@routes.post("/api/v1/queues/drain")
@requires("cluster")
async def drain_queues(request: web.Request) -> web.Response:
    data = await body(request, "Drain", optional=True) or {}
    timeout_ms = int(data.get("timeout_ms", DEFAULT_DRAIN_MS))
    remaining = await service(request, "router").drain(timeout_ms / 1000)
    return json_response(
        {"drained": remaining == 0, "remaining": remaining, "timeout_ms": timeout_ms}
    )


@routes.get("/api/v1/resources")
@requires("metrics")
async def resources(request: web.Request) -> web.Response:
    node = request.config_dict[NODE]
    return json_response({"nodes": [node_resources(node, request.config_dict[CPU])]})


@routes.post("/api/v1/emergency/stop")
@requires("cluster")
async def emergency_stop(request: web.Request) -> web.Response:
    from caxton.api.emergency import fan_out

    data = await body(request, "EmergencyStop")
    service(request, "agents")
    if data.get("preserve_state") and not data.get("dump_to"):
        raise ValidationError("preserve_state needs dump_to: the directory the state goes to")
    action = {
        "action": "stop",
        "dump_to": data.get("dump_to") if data.get("preserve_state") else None,
    }
    result = await fan_out(request, action, cluster=data.get("cluster", False))
    stopped = sum(int(n["stopped"]) for n in result["nodes"].values())
    return json_response({"stopped": stopped, **result})
