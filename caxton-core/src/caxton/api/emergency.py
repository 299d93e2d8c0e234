"""The emergency procedures of the runbook, cluster-wide: stop and start, suspension by
priority, load shedding, circuit breakers, isolation.

Each route runs one :mod:`caxton.emergency` action on every reachable node at once (a
node not in a cluster: on itself) and answers what each node did::

    {"nodes": {"n1": {...}, "n2": {...}}, "failed": {"n3": "why"}}

All need the ``cluster`` permission and are written to the audit log.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from caxton.agents.model import PRIORITIES
from caxton.api.common import body
from caxton.api.keys import NODE
from caxton.api.openapi import object_schema, operation, string_schema
from caxton.api.permissions import requires
from caxton.api.responses import json_response
from caxton.emergency import apply
from caxton.errors import CaxtonError, Conflict, NotFound

__all__ = ["extend_openapi", "fan_out", "routes"]

routes = web.RouteTableDef()

#: Seconds each node may take for its part.
TIMEOUT = 120.0


async def fan_out(
    request: web.Request, action: dict[str, Any], *, cluster: bool = True
) -> dict[str, Any]:
    """``action`` on every reachable node (or only here): ``{"nodes", "failed"}``."""
    node = request.config_dict[NODE]
    if not cluster or node.cluster is None:
        return {"nodes": {node.node_id: await apply(node, action)}, "failed": {}}
    answers = await node.cluster.operations.fan_out("emergency", action, TIMEOUT)
    return {
        "nodes": {n: a for n, a in answers.items() if not isinstance(a, CaxtonError)},
        "failed": {n: str(a) for n, a in answers.items() if isinstance(a, CaxtonError)},
    }


@routes.post("/api/v1/emergency/start")
@requires("cluster")
async def emergency_start(request: web.Request) -> web.Response:
    data = await body(request, "EmergencyStart", optional=True) or {}
    action = {"action": "start", "replay_from": data.get("replay_from")}
    return json_response(await fan_out(request, action, cluster=data.get("cluster", False)))


@routes.post("/api/v1/emergency/suspend")
@requires("cluster")
async def emergency_suspend(request: web.Request) -> web.Response:
    data = await body(request, "PrioritySuspend")
    return json_response(await fan_out(request, {"action": "suspend", **data}))


@routes.post("/api/v1/emergency/resume")
@requires("cluster")
async def emergency_resume(request: web.Request) -> web.Response:
    data = await body(request, "EmergencyResume", optional=True) or {}
    return json_response(await fan_out(request, {"action": "resume", **data}))


@routes.post("/api/v1/emergency/shed-load")
@requires("cluster")
async def shed_load(request: web.Request) -> web.Response:
    data = await body(request, "ShedLoad")
    return json_response(await fan_out(request, {"action": "shed", **data}))


@routes.get("/api/v1/circuit-breakers")
@requires("read")
async def circuit_breakers(request: web.Request) -> web.Response:
    state = request.config_dict[NODE].emergency
    breakers = state.breakers if state is not None else {}
    return json_response(
        {
            "open": sorted(n for n, b in breakers.items() if b.closing_at is None),
            "closing": sorted(n for n, b in breakers.items() if b.closing_at is not None),
        }
    )


@routes.post("/api/v1/circuit-breakers/activate")
@requires("cluster")
async def activate_breakers(request: web.Request) -> web.Response:
    data = await body(request, "BreakerActivate")
    return json_response(await fan_out(request, {"action": "breaker-open", **data}))


@routes.post("/api/v1/circuit-breakers/reset")
@requires("cluster")
async def reset_breakers(request: web.Request) -> web.Response:
    data = await body(request, "BreakerReset", optional=True) or {}
    duration = data.pop("duration_ms", 0) / 1000
    return json_response(
        await fan_out(request, {"action": "breaker-reset", "duration": duration, **data})
    )


async def _isolation(request: web.Request, isolated: bool) -> web.Response:
    data = await body(request, "IsolateNode")
    node = request.config_dict[NODE]
    target = data["node"]
    if node.cluster is None:
        if target != node.node_id:
            raise NotFound(f"node {node.node_id} is not in a cluster and knows no {target}")
        raise Conflict(f"node {node.node_id} is not part of a cluster: there is nothing to leave")
    answer = await node.cluster.operations.ask(
        target, "emergency", {"action": "isolate", "isolated": isolated}, TIMEOUT
    )
    return json_response({"nodes": {target: answer}, "failed": {}})


@routes.post("/api/v1/cluster/isolate")
@requires("cluster")
async def isolate_node(request: web.Request) -> web.Response:
    return await _isolation(request, True)


@routes.post("/api/v1/cluster/rejoin")
@requires("cluster")
async def rejoin_node(request: web.Request) -> web.Response:
    return await _isolation(request, False)


# -------------------------------------------------------------------------
# The OpenAPI document
# -------------------------------------------------------------------------

_AGENTS = {
    "anyOf": [
        {"type": "string", "enum": ["*"]},
        {"type": "array", "items": string_schema(64), "minItems": 1, "maxItems": 1000},
    ],
    "description": "Agent names, or '*' for every agent",
}
_PATH = {**string_schema(4096), "description": "A directory on each node's host"}


def _schemas() -> dict[str, Any]:
    return {
        "EmergencyStart": object_schema(
            {
                "cluster": {"type": "boolean", "description": "Every reachable node"},
                "replay_from": {
                    **_PATH,
                    "description": "A --dump-to directory: re-send the queued messages",
                },
            }
        ),
        "PrioritySuspend": object_schema(
            {"priority": {"type": "string", "enum": list(PRIORITIES)}}, ("priority",)
        ),
        "EmergencyResume": object_schema(
            {
                "priority": {"type": "string", "enum": list(PRIORITIES)},
                "reason": {"type": "string", "enum": ["shed", "priority"]},
            }
        ),
        "ShedLoad": object_schema(
            {"percentage": {"type": "number", "minimum": 0.01, "maximum": 100}},
            ("percentage",),
        ),
        "BreakerActivate": object_schema({"agents": _AGENTS}, ("agents",)),
        "BreakerReset": object_schema(
            {
                "agents": _AGENTS,
                "duration_ms": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": 86_400_000,
                    "description": "Close gradually over this long (0: at once)",
                },
            }
        ),
        "IsolateNode": object_schema({"node": string_schema(255)}, ("node",)),
        "EmergencyResult": object_schema(
            {
                "nodes": {"type": "object", "description": "node id -> what it did"},
                "failed": {"type": "object", "description": "node id -> why it did not"},
            },
            ("nodes", "failed"),
            closed=False,
        ),
        "CircuitBreakers": object_schema(
            {
                "open": {"type": "array", "items": {"type": "string"}},
                "closing": {"type": "array", "items": {"type": "string"}},
            },
            ("open", "closing"),
        ),
    }


def _post(operation_id: str, summary: str, schema: str, required: bool = True) -> dict[str, Any]:
    return {
        "post": operation(
            operation_id,
            summary,
            "cluster",
            {200: "EmergencyResult"},
            (400, 404, 409, 422, 502, 503),
            body=schema,
            body_required=required,
            tag="emergency",
        )
    }


def _paths() -> dict[str, Any]:
    return {
        "/api/v1/emergency/start": _post(
            "emergencyStart",
            "Start again the agents an emergency stop stopped (cluster: every node)",
            "EmergencyStart",
            False,
        ),
        "/api/v1/emergency/suspend": _post(
            "emergencySuspend",
            "Suspend the running agents of a priority class on every node",
            "PrioritySuspend",
        ),
        "/api/v1/emergency/resume": _post(
            "emergencyResume",
            "Resume the agents a priority suspension or load shedding suspended",
            "EmergencyResume",
            False,
        ),
        "/api/v1/emergency/shed-load": _post(
            "shedLoad",
            "Suspend a percentage of every node's running agents, lowest priority first",
            "ShedLoad",
        ),
        "/api/v1/circuit-breakers": {
            "get": operation(
                "circuitBreakers",
                "The circuit breakers open (or closing) on this node",
                "read",
                {200: "CircuitBreakers"},
                tag="emergency",
            )
        },
        "/api/v1/circuit-breakers/activate": _post(
            "activateCircuitBreakers",
            "Messages to these agents fail at once with a clear reason, on every node",
            "BreakerActivate",
        ),
        "/api/v1/circuit-breakers/reset": _post(
            "resetCircuitBreakers",
            "Close circuit breakers, at once or gradually over duration_ms",
            "BreakerReset",
            False,
        ),
        "/api/v1/cluster/isolate": _post(
            "isolateNode",
            "Take a node out of routing and placement without stopping it",
            "IsolateNode",
        ),
        "/api/v1/cluster/rejoin": _post(
            "rejoinNode", "Bring an isolated node back into routing and placement", "IsolateNode"
        ),
    }


def extend_openapi(document: dict[str, Any]) -> dict[str, Any]:
    """Add the emergency operations and schemas to ``document``; return it."""
    document["paths"].update(_paths())
    document["components"]["schemas"].update(_schemas())
    return document
