"""``/api/v1/agents``: deploy, list, get, update, remove, and lifecycle actions.

The routes for one agent work through any node of a cluster: the agent's node carries
them out (:mod:`caxton.cluster.agent_ops`). ``GET /api/v1/agents`` lists this node's
agents, or with ``scope=cluster`` every node's.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
from typing import Any

from aiohttp import web

from caxton.api.common import body, path_uuid, query, query_text, service
from caxton.api.keys import GUARD, IDENTITY, NODE, REQUEST_ID
from caxton.api.openapi import DRAIN_TIMEOUT_SCHEMA, LIMIT_ALIASES, LIST_QUERY, MAX_QUERY_NUMBER
from caxton.api.permissions import requires
from caxton.api.responses import json_response
from caxton.api.validation import decode_base64
from caxton.cluster.agent_ops import Caller, describe, list_cluster, perform
from caxton.cluster.placement import DeploySpec, deploy_local, place
from caxton.drivers.placement import PlacementRequest
from caxton.errors import ValidationError

__all__ = ["act", "routes"]

routes = web.RouteTableDef()


def _limits(given: dict[str, Any] | None) -> dict[str, int] | None:
    """The request's limits with aliases resolved and integral numbers as ints."""
    if given is None:
        return None
    limits: dict[str, int] = {}
    for key, value in given.items():
        target = LIMIT_ALIASES.get(key, key)
        number = int(value)
        if target in limits and limits[target] != number:
            raise ValidationError(
                f"resource_limits sets both {key} and {target} with different values; "
                f"{key} is an alias of {target}: give one of them"
            )
        limits[target] = number
    return limits


def _caller(request: web.Request) -> Caller:
    return Caller.of(request.get(IDENTITY), request.get(REQUEST_ID), request.remote)


async def act(request: web.Request, action: str, **options: Any) -> dict[str, Any] | None:
    """Run ``action`` on the agent of the ``agent_id`` path parameter (by id only, never
    by name), on whichever node runs it (:mod:`caxton.cluster.agent_ops`)."""
    agent_id = path_uuid(request, "agent_id")
    return await perform(request.config_dict[NODE], action, agent_id, _caller(request), **options)


def _placement(name: str, data: dict[str, Any]) -> PlacementRequest | None:
    """The placement the request asks for; None: deploy on this node, as always."""
    if not any(data.get(key) for key in ("placement_strategy", "prefer_nodes", "target_node")):
        return None
    return PlacementRequest(
        agent_name=name,
        strategy=data.get("placement_strategy"),
        prefer_nodes=tuple(data.get("prefer_nodes", ())),
        target_node=data.get("target_node"),
    )


@routes.get("/api/v1/agents")
@requires("read")
async def list_agents(request: web.Request) -> web.Response:
    params = {name: query(request, name, schema) for name, schema in LIST_QUERY.items()}
    node = request.config_dict[NODE]
    if params["scope"] == "cluster":
        agents = await list_cluster(node, _caller(request))
    else:
        agents = [describe(node, a) for a in service(request, "agents").list()]
    if params["name"] is not None:
        pattern = params["name"].strip()
        agents = [a for a in agents if fnmatch.fnmatchcase(a["name"], pattern)]
    if params["state"] is not None:
        agents = [a for a in agents if a["state"] == params["state"]]
    if params["node"] is not None:
        agents = [a for a in agents if a.get("node_id") == params["node"]]
    total = len(agents)
    offset = params["offset"] or 0
    limit = params["limit"]
    page = agents[offset : None if limit is None else offset + limit]
    return json_response(page, headers={"X-Total-Count": str(total)})


@routes.post("/api/v1/agents")
@requires("deploy")
async def deploy_agent(request: web.Request) -> web.Response:
    data = await body(request, "DeployAgent")
    service(request, "agents")
    node = request.config_dict[NODE]
    wasm = decode_base64(data["wasm_module"], "wasm_module")
    spec = DeploySpec(
        name=data["name"],
        limits=_limits(data.get("resource_limits")),
        start=data.get("start", True),
        allowed_senders=data.get("allowed_senders"),
        priority=data.get("priority", "normal"),
    )
    placement = _placement(data["name"].strip(), data)
    if data.get("replace"):
        await _remove_named(request, data["name"].strip())
    if placement is None:
        local = True
        agent = (await deploy_local(node, spec, wasm)).to_dict()
    else:
        # Placed by the strategy and hooks; another node answers with its own agent.
        agent, local = await place(node, spec, wasm, placement)
    headers = {"Location": f"/api/v1/agents/{agent['id']}"} if local else None
    return json_response(agent, status=201, headers=headers)


async def _remove_named(request: web.Request, name: str) -> None:
    """``replace``: remove the agent(s) named ``name``, wherever they run, before the
    deploy (which then claims the name afresh). The caller needs ``remove`` too."""
    guard = request.config_dict.get(GUARD)
    if guard is not None:
        guard.authorize(request[IDENTITY], "remove")
    node = request.config_dict[NODE]
    ids = {agent.id for agent in service(request, "agents").list() if agent.name == name}
    if node.cluster is not None:
        ids |= {entry.agent_id for entry in node.cluster.registry.lookup(name) if entry.agent_id}
    for agent_id in sorted(ids):
        await perform(node, "remove", agent_id, _caller(request))
    if node.cluster is not None:
        await node.cluster.names.gone(name, ids)


@routes.get("/api/v1/agents/{agent_id}")
@requires("read")
async def get_agent(request: web.Request) -> web.Response:
    return json_response(await act(request, "get"))


@routes.get("/api/v1/agents/{agent_id}/logs")
@requires("read")
async def agent_logs(request: web.Request) -> web.StreamResponse:
    """The agent's own log lines (its ``log`` host calls), oldest first, from its node.

    ``since`` (Unix time) and ``after`` (a line's ``seq``) choose where to start. With
    ``follow=true`` the answer is a stream of JSON lines, one per log line, polling the
    agent's node every ``interval`` seconds (0.5) until the client goes away.
    """
    since = _number(request, "since", 0.0)
    after = _whole_number(request, "after")
    follow = request.query.get("follow", "false").lower() in ("1", "true", "yes")
    if not follow:
        return json_response(await act(request, "logs", since=since, after=after))
    interval = min(max(_number(request, "interval", 0.5), 0.05), 10.0)
    first = await act(request, "logs", since=since, after=after)  # 404 before streaming
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    lines = (first or {}).get("lines", [])
    while True:
        for line in lines:
            after = max(after, int(line["seq"]))
            await response.write(json.dumps(line).encode() + b"\n")
        await asyncio.sleep(interval)
        lines = ((await act(request, "logs", since=since, after=after)) or {}).get("lines", [])


def _whole_number(request: web.Request, name: str) -> int:
    text = query_text(request, name)
    if text is None:
        return 0
    if not (text.isascii() and text.isdigit() and len(text) <= 15):
        raise ValidationError(
            f"Invalid query parameter {name}: expected a whole number from 0, got {text!r}"
        )
    return int(text)


def _number(request: web.Request, name: str, default: float) -> float:
    text = query_text(request, name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValidationError(
            f"Invalid query parameter {name}: expected a number, got {text!r}"
        ) from None
    if not 0 <= value <= MAX_QUERY_NUMBER:  # also refuses nan and infinity
        raise ValidationError(
            f"Invalid query parameter {name}: must be a number from 0 to {MAX_QUERY_NUMBER}"
        )
    return value


@routes.put("/api/v1/agents/{agent_id}")
@requires("update")
async def update_agent(request: web.Request) -> web.Response:
    path_uuid(request, "agent_id")
    data = await body(request, "UpdateAgent")
    wasm = decode_base64(data["wasm_module"], "wasm_module") if "wasm_module" in data else None
    return json_response(
        await act(request, "update", wasm=wasm, limits=_limits(data.get("resource_limits")))
    )


@routes.delete("/api/v1/agents/{agent_id}")
@requires("remove")
async def remove_agent(request: web.Request) -> web.Response:
    await act(request, "remove")
    return web.Response(status=204)


@routes.post("/api/v1/agents/{agent_id}/start")
@requires("update")
async def start_agent(request: web.Request) -> web.Response:
    return json_response(await act(request, "start"))


@routes.post("/api/v1/agents/{agent_id}/stop")
@requires("update")
async def stop_agent(request: web.Request) -> web.Response:
    drain_ms = query(request, "drain_timeout_ms", DRAIN_TIMEOUT_SCHEMA)
    return json_response(await act(request, "stop", drain_timeout=(drain_ms or 0) / 1000))


@routes.post("/api/v1/agents/{agent_id}/suspend")
@requires("update")
async def suspend_agent(request: web.Request) -> web.Response:
    return json_response(await act(request, "suspend"))


@routes.post("/api/v1/agents/{agent_id}/move")
@requires("update")
async def move_agent(request: web.Request) -> web.Response:
    path_uuid(request, "agent_id")
    data = await body(request, "MoveAgent")
    return json_response(await act(request, "move", to=data["to"]))


@routes.post("/api/v1/agents/{agent_id}/resume")
@requires("update")
async def resume_agent(request: web.Request) -> web.Response:
    return json_response(await act(request, "resume"))
