"""``/api/v1/agents``: deploy, list, get, update, remove, and lifecycle actions."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from caxton.agents import Agent
from caxton.api.common import body, path_uuid, query, service
from caxton.api.keys import NODE
from caxton.api.openapi import DRAIN_TIMEOUT_SCHEMA, LIMIT_ALIASES, STATE_SCHEMA
from caxton.api.permissions import requires
from caxton.api.responses import json_response
from caxton.api.validation import decode_base64
from caxton.cluster.placement import DeploySpec, deploy_local, place
from caxton.drivers.placement import PlacementRequest
from caxton.errors import AgentNotFound, ValidationError

__all__ = ["routes"]

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


def _agent(request: web.Request) -> Agent:
    """The agent named by the ``agent_id`` path parameter (by id only, never by name)."""
    agent_id = path_uuid(request, "agent_id")
    try:
        agent: Agent = service(request, "agents").get(agent_id)
    except AgentNotFound:
        agent = None  # type: ignore[assignment]
    if agent is None or agent.id != agent_id:
        raise AgentNotFound(agent_id)
    return agent


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
    name = query(request, "name", {"$ref": "#/components/schemas/AgentName"})
    state = query(request, "state", STATE_SCHEMA)
    agents = service(request, "agents").list()
    if name is not None:
        agents = [a for a in agents if a.name == name.strip()]
    if state is not None:
        agents = [a for a in agents if a.state.value == state]
    return json_response([a.to_dict() for a in agents])


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
    )
    placement = _placement(data["name"].strip(), data)
    if placement is None:
        local = True
        agent = (await deploy_local(node, spec, wasm)).to_dict()
    else:
        # Placed by the strategy and hooks; another node answers with its own agent.
        agent, local = await place(node, spec, wasm, placement)
    headers = {"Location": f"/api/v1/agents/{agent['id']}"} if local else None
    return json_response(agent, status=201, headers=headers)


@routes.get("/api/v1/agents/{agent_id}")
@requires("read")
async def get_agent(request: web.Request) -> web.Response:
    return json_response(_agent(request).to_dict())


@routes.put("/api/v1/agents/{agent_id}")
@requires("update")
async def update_agent(request: web.Request) -> web.Response:
    agent = _agent(request)
    data = await body(request, "UpdateAgent")
    wasm = decode_base64(data["wasm_module"], "wasm_module") if "wasm_module" in data else None
    updated = await service(request, "agents").update(
        agent.id, wasm=wasm, limits=_limits(data.get("resource_limits"))
    )
    return json_response(updated.to_dict())


@routes.delete("/api/v1/agents/{agent_id}")
@requires("remove")
async def remove_agent(request: web.Request) -> web.Response:
    agent = _agent(request)
    await service(request, "agents").remove(agent.id)
    return web.Response(status=204)


async def _lifecycle(request: web.Request, operation: str, **options: Any) -> web.Response:
    agent = _agent(request)
    manager = service(request, "agents")
    method = getattr(manager, LIFECYCLE_METHODS[operation])
    changed: Agent = await method(agent.id, **options)
    return json_response(changed.to_dict())


#: Lifecycle action -> AgentManager method.
LIFECYCLE_METHODS = {
    "start": "start_agent",
    "stop": "stop_agent",
    "suspend": "suspend",
    "resume": "resume",
}


@routes.post("/api/v1/agents/{agent_id}/start")
@requires("update")
async def start_agent(request: web.Request) -> web.Response:
    return await _lifecycle(request, "start")


@routes.post("/api/v1/agents/{agent_id}/stop")
@requires("update")
async def stop_agent(request: web.Request) -> web.Response:
    drain_ms = query(request, "drain_timeout_ms", DRAIN_TIMEOUT_SCHEMA)
    return await _lifecycle(request, "stop", drain_timeout=(drain_ms or 0) / 1000)


@routes.post("/api/v1/agents/{agent_id}/suspend")
@requires("update")
async def suspend_agent(request: web.Request) -> web.Response:
    return await _lifecycle(request, "suspend")


@routes.post("/api/v1/agents/{agent_id}/resume")
@requires("update")
async def resume_agent(request: web.Request) -> web.Response:
    return await _lifecycle(request, "resume")
