"""The REST API against a real node: real socket, wasmtime, router and SQLite."""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from caxton import hookimpl
from caxton.api import PERMISSIONS, PUBLIC, requires
from caxton.api.keys import OPENAPI
from caxton.api.permissions import UNDECLARED, permission_of
from caxton.api.server import build_app
from caxton.node import Node
from caxton.testing import NodeFactory

EMPTY_MODULE = "AGFzbQEAAAA="

#: The runbook's deployment body, byte for byte (004, "Deploy Agent").
RUNBOOK_DEPLOY = """{
    "name": "production-agent-1",
    "wasm_module": "AGFzbQEAAAA=",
    "resource_limits": {
      "max_memory_bytes": 10485760,
      "max_fuel": 1000000,
      "max_execution_time_ms": 5000
    }
  }"""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
async def node(caxton_node_factory: NodeFactory) -> AsyncIterator[Node]:
    async with caxton_node_factory.node() as node:
        yield node


async def call(
    http: aiohttp.ClientSession, method: str, path: str, body: Any = None, **kwargs: Any
) -> tuple[int, Any]:
    if body is not None and not isinstance(body, (str, bytes)):
        kwargs["json"] = body
    elif body is not None:
        kwargs["data"] = body
        kwargs.setdefault("headers", {"Content-Type": "application/json"})
    async with http.request(method, path, **kwargs) as response:
        text = await response.text()
        return response.status, json.loads(text) if text else None


async def deploy(
    http: aiohttp.ClientSession, name: str, wasm: bytes | str = EMPTY_MODULE, **extra: Any
) -> dict[str, Any]:
    module = wasm if isinstance(wasm, str) else b64(wasm)
    status, agent = await call(
        http, "POST", "/api/v1/agents", {"name": name, "wasm_module": module, **extra}
    )
    assert status == 201, agent
    return agent  # type: ignore[no-any-return]


# -------------------------------------------------------------------------
# Health and the runbook
# -------------------------------------------------------------------------


async def test_health_liveness_readiness(http: aiohttp.ClientSession) -> None:
    assert await call(http, "GET", "/api/v1/health") == (200, {"status": "healthy"})
    assert await call(http, "GET", "/health") == (200, {"status": "alive"})
    status, ready = await call(http, "GET", "/ready")
    assert status == 200
    assert ready["status"] == "ready"
    assert ready["checks"] == {"running": True, "state_store": True, "agents": True, "router": True}


async def test_runbook_deploy_list_get(http: aiohttp.ClientSession) -> None:
    status, agent = await call(http, "POST", "/api/v1/agents", RUNBOOK_DEPLOY)
    assert status == 201
    assert str(uuid.UUID(agent["id"])) == agent["id"]
    assert agent["name"] == "production-agent-1"
    assert agent["state"] == "running"
    assert agent["limits"]["max_memory_bytes"] == 10485760
    assert agent["limits"]["max_fuel"] == 1000000
    assert agent["limits"]["max_execution_time_ms"] == 5000

    status, agents = await call(http, "GET", "/api/v1/agents")
    assert status == 200
    assert [a["name"] for a in agents] == ["production-agent-1"]

    assert await call(http, "GET", f"/api/v1/agents/{agent['id']}") == (200, agent)
    status, error = await call(http, "GET", "/api/v1/agents/550e8400-e29b-41d4-a716-446655440000")
    assert status == 404
    assert error == {
        "error": "Not found",
        "details": "Agent not found: 550e8400-e29b-41d4-a716-446655440000",
    }


async def test_deploy_answers_location(http: aiohttp.ClientSession) -> None:
    async with http.post(
        "/api/v1/agents", json={"name": "located", "wasm_module": EMPTY_MODULE}
    ) as response:
        agent = await response.json()
        assert response.headers["Location"] == f"/api/v1/agents/{agent['id']}"


LONG = "x" * 65


@pytest.mark.parametrize(
    ("body", "error", "details"),
    [
        ({"name": "", "wasm_module": EMPTY_MODULE}, "Validation failed", "name must not be empty"),
        ({"name": "   ", "wasm_module": EMPTY_MODULE}, "Validation failed", "name must be 1-64"),
        ({"name": LONG, "wasm_module": EMPTY_MODULE}, "Validation failed", "name must be 1-64"),
        ({"name": "a\x00b", "wasm_module": EMPTY_MODULE}, "Validation failed", "control"),
        ({"name": 7, "wasm_module": EMPTY_MODULE}, "Validation failed", "name must be a string"),
        ({"wasm_module": EMPTY_MODULE}, "Validation failed", "missing field 'name'"),
        ({"name": "a"}, "Validation failed", "missing field 'wasm_module'"),
        ({"name": "a", "wasm_module": "!!notbase64"}, "Validation failed", "not valid base64"),
        ({"name": "a", "wasm_module": "AAAA"}, "Invalid WebAssembly module", "WebAssembly"),
        ({"name": "a", "wasm_module": ""}, "Validation failed", "wasm_module must not be empty"),
        (
            {"name": "a", "wasm_module": EMPTY_MODULE, "resource_limits": {"max_fuel": 0}},
            "Validation failed",
            "resource_limits.max_fuel must be greater than 0",
        ),
        (
            {"name": "a", "wasm_module": EMPTY_MODULE, "resource_limits": {"max_memory_bytes": -1}},
            "Validation failed",
            "resource_limits.max_memory_bytes must be greater than 0",
        ),
        (
            {
                "name": "a",
                "wasm_module": EMPTY_MODULE,
                "resource_limits": {"max_memory_bytes": 1 << 40},
            },
            "Validation failed",
            "exceeds the maximum",
        ),
        (
            {"name": "a", "wasm_module": EMPTY_MODULE, "resource_limits": {"max_fuel": 1.5}},
            "Validation failed",
            "must be an integer",
        ),
        (
            {"name": "a", "wasm_module": EMPTY_MODULE, "resource_limits": {"max_fuel": True}},
            "Validation failed",
            "must be an integer",
        ),
        (
            {"name": "a", "wasm_module": EMPTY_MODULE, "resource_limits": {"max_cpu": 5}},
            "Validation failed",
            "unknown field 'resource_limits.max_cpu'",
        ),
        ({"name": "a", "wasm_module": EMPTY_MODULE, "colour": 1}, "Validation failed", "unknown"),
        ([1, 2], "Validation failed", "body must be an object"),
        ("{not json", "Malformed JSON", "not valid JSON"),
        ('{"name": NaN}', "Malformed JSON", "NaN is not valid JSON"),
        ("", "Malformed JSON", "empty"),
        ("null", "Validation failed", "body must not be null"),
    ],
)
async def test_deploy_validation(
    http: aiohttp.ClientSession, body: Any, error: str, details: str
) -> None:
    status, answer = await call(http, "POST", "/api/v1/agents", body if body != "" else b"")
    assert status == 400
    assert set(answer) == {"error", "details"}
    assert answer["error"] == error
    assert details in answer["details"]
    assert (await call(http, "GET", "/api/v1/agents"))[1] == []


async def test_name_is_trimmed_to_at_most_64(http: aiohttp.ClientSession) -> None:
    agent = await deploy(http, "  " + "n" * 64 + "\t")
    assert agent["name"] == "n" * 64


async def test_duplicate_name_is_409(http: aiohttp.ClientSession) -> None:
    await deploy(http, "twin")
    status, error = await call(
        http, "POST", "/api/v1/agents", {"name": " twin ", "wasm_module": EMPTY_MODULE}
    )
    assert status == 409
    assert error["error"] == "Conflict"
    assert "already exists" in error["details"]


async def test_max_cpu_millis_is_an_alias(http: aiohttp.ClientSession) -> None:
    agent = await deploy(http, "old-style", resource_limits={"max_cpu_millis": 1234})
    assert agent["limits"]["max_execution_time_ms"] == 1234
    status, error = await call(
        http,
        "POST",
        "/api/v1/agents",
        {
            "name": "both",
            "wasm_module": EMPTY_MODULE,
            "resource_limits": {"max_cpu_millis": 1, "max_execution_time_ms": 2},
        },
    )
    assert status == 400
    assert "alias" in error["details"]


async def test_placement_fields(http: aiohttp.ClientSession, node: Node) -> None:
    agent = await deploy(
        http,
        "placed",
        placement_strategy="least-loaded",
        prefer_nodes=[node.node_id, "node-9"],
        target_node=node.node_id,
    )
    assert agent["node_id"] == node.node_id
    status, error = await call(
        http,
        "POST",
        "/api/v1/agents",
        {"name": "elsewhere", "wasm_module": EMPTY_MODULE, "target_node": "node-9"},
    )
    assert status == 400
    assert "node-9" in error["details"]


async def test_get_by_non_uuid_is_400(http: aiohttp.ClientSession) -> None:
    await deploy(http, "by-name")
    status, error = await call(http, "GET", "/api/v1/agents/by-name")
    assert status == 400
    assert "must be a UUID" in error["details"]


async def test_list_filters(http: aiohttp.ClientSession) -> None:
    await deploy(http, "one")
    await deploy(http, "two", start=False)
    assert [a["name"] for a in (await call(http, "GET", "/api/v1/agents?name=two"))[1]] == ["two"]
    status, loaded = await call(http, "GET", "/api/v1/agents?state=loaded")
    assert (status, [a["name"] for a in loaded]) == (200, ["two"])
    assert (await call(http, "GET", "/api/v1/agents?state=sleeping"))[0] == 400


# -------------------------------------------------------------------------
# Lifecycle, update, remove
# -------------------------------------------------------------------------


async def test_lifecycle_actions(http: aiohttp.ClientSession) -> None:
    agent = await deploy(http, "cycler")
    path = f"/api/v1/agents/{agent['id']}"
    for action, state in (
        ("suspend", "suspended"),
        ("resume", "running"),
        ("stop", "stopped"),
        ("start", "running"),
    ):
        status, changed = await call(http, "POST", f"{path}/{action}")
        assert (status, changed["state"]) == (200, state), changed
    status, error = await call(http, "POST", f"{path}/resume")
    assert status == 409
    assert error["error"] == "Invalid state transition"
    status, stopped = await call(http, "POST", f"{path}/stop?drain_timeout_ms=100")
    assert (status, stopped["state"]) == (200, "stopped")
    status, error = await call(http, "POST", f"{path}/stop?drain_timeout_ms=soon")
    assert status == 400
    assert "integer" in error["details"]
    missing = f"/api/v1/agents/{uuid.uuid4()}/start"
    assert (await call(http, "POST", missing))[0] == 404


async def test_update_limits_and_module(
    http: aiohttp.ClientSession, example_agents: dict[str, bytes]
) -> None:
    agent = await deploy(http, "swapper")
    path = f"/api/v1/agents/{agent['id']}"
    status, updated = await call(http, "PUT", path, {"resource_limits": {"max_fuel": 5000}})
    assert status == 200
    assert updated["limits"]["max_fuel"] == 5000
    assert updated["id"] == agent["id"]
    status, swapped = await call(http, "PUT", path, {"wasm_module": b64(example_agents["echo"])})
    assert status == 200
    assert swapped["module_sha256"] != agent["module_sha256"]
    assert swapped["state"] == "running"
    status, error = await call(http, "PUT", path, {})
    assert status == 400
    assert "at least one" in error["details"]
    status, error = await call(http, "PUT", path, {"wasm_module": "AAAA"})
    assert (status, error["error"]) == (400, "Invalid WebAssembly module")


async def test_remove(http: aiohttp.ClientSession) -> None:
    agent = await deploy(http, "doomed")
    path = f"/api/v1/agents/{agent['id']}"
    async with http.delete(path) as response:
        assert response.status == 204
        assert await response.read() == b""
    assert (await call(http, "GET", path))[0] == 404
    assert (await call(http, "DELETE", path))[0] == 404
    await deploy(http, "doomed")  # the name is free again


# -------------------------------------------------------------------------
# Messages, conversations, contract net
# -------------------------------------------------------------------------


async def test_request_reply_over_http(
    http: aiohttp.ClientSession, example_agents: dict[str, bytes]
) -> None:
    await deploy(http, "echo", example_agents["echo"])
    status, result = await call(
        http,
        "POST",
        "/api/v1/messages",
        {"performative": "request", "receiver": "echo", "content": {"n": 1}, "wait_ms": 5000},
    )
    assert status == 200, result
    assert result["status"] == "replied"
    assert result["reply"]["performative"] == "inform"
    assert result["reply"]["content"] == {"n": 1}
    assert result["reply"]["receiver"] == result["sender"]
    assert result["reply"]["in_reply_to"] == result["message_id"]


async def test_send_without_waiting(
    http: aiohttp.ClientSession, example_agents: dict[str, bytes]
) -> None:
    await deploy(http, "echo", example_agents["echo"])
    status, result = await call(
        http,
        "POST",
        "/api/v1/messages",
        {"performative": "inform", "sender": "ops", "receiver": "echo", "content": "hi"},
    )
    assert status == 202
    assert result["status"] == "accepted"
    assert result["sender"] == "ops"


@pytest.mark.parametrize(
    ("body", "status", "details"),
    [
        ({"performative": "request", "receiver": "ghost"}, 404, "Agent not found: ghost"),
        ({"performative": "shout", "receiver": "echo"}, 400, "performative must be one of"),
        ({"performative": "request"}, 400, "receiver"),
        ({"receiver": "echo"}, 400, "missing field 'performative'"),
        ({"performative": "request", "receiver": "echo", "wait_ms": -1}, 400, "wait_ms"),
        ({"performative": "request", "receiver": "echo", "reply_by": 1}, 400, "already past"),
    ],
)
async def test_message_errors(
    http: aiohttp.ClientSession,
    example_agents: dict[str, bytes],
    body: dict[str, Any],
    status: int,
    details: str,
) -> None:
    await deploy(http, "echo", example_agents["echo"])
    answer_status, answer = await call(http, "POST", "/api/v1/messages", body)
    assert answer_status == status, answer
    assert details in answer["details"]


async def test_no_reply_in_time_is_504(http: aiohttp.ClientSession) -> None:
    agent = await deploy(http, "sleeper")
    await call(http, "POST", f"/api/v1/agents/{agent['id']}/suspend")
    status, error = await call(
        http,
        "POST",
        "/api/v1/messages",
        {"performative": "request", "receiver": "sleeper", "wait_ms": 50},
    )
    assert status == 504
    assert error["error"] == "Timeout"


async def test_conversation(http: aiohttp.ClientSession, example_agents: dict[str, bytes]) -> None:
    await deploy(http, "echo", example_agents["echo"])
    status, _ = await call(
        http,
        "POST",
        "/api/v1/messages",
        {
            "performative": "request",
            "receiver": "echo",
            "conversation_id": "conv-1",
            "content": 1,
            "wait_ms": 5000,
        },
    )
    assert status == 200
    status, conversation = await call(http, "GET", "/api/v1/conversations/conv-1")
    assert status == 200
    assert conversation["conversation_id"] == "conv-1"
    assert "echo" in conversation["participants"]
    assert conversation["message_count"] >= 2
    status, error = await call(http, "GET", "/api/v1/conversations/nope")
    assert (status, error["error"]) == (404, "Not found")


async def test_contract_net_task(
    http: aiohttp.ClientSession, example_agents: dict[str, bytes]
) -> None:
    for name, price in (("cheap", 80), ("dear", 150)):
        await deploy(http, name, example_agents["bidder"])
        status, _ = await call(
            http,
            "POST",
            "/api/v1/messages",
            {"performative": "inform", "receiver": name, "content": {"price": price}},
        )
        assert status == 202
    status, task = await call(
        http,
        "POST",
        "/api/v1/tasks",
        {"content": {"budget": 100}, "participants": ["cheap", "dear"], "deadline_ms": 5000},
    )
    assert status == 201, task
    assert task["state"] == "created"
    status, done = await call(http, "POST", f"/api/v1/tasks/{task['id']}/distribute")
    assert status == 200, done
    assert done["state"] == "awarded"
    assert done["winner"] == "cheap"
    assert list(done["proposals"]) == ["cheap"]
    assert done["proposals"]["cheap"]["content"] == {"price": 80}
    assert list(done["refusals"]) == ["dear"]
    assert done["result"]["content"] == {"done": True, "price": 80}
    assert (await call(http, "GET", f"/api/v1/tasks/{task['id']}")) == (200, done)
    status, error = await call(http, "POST", f"/api/v1/tasks/{task['id']}/distribute")
    assert (status, error["error"]) == (409, "Conflict")
    status, error = await call(http, "GET", f"/api/v1/tasks/{uuid.uuid4()}")
    assert status == 404


async def test_task_with_unknown_participant_is_409(http: aiohttp.ClientSession) -> None:
    status, task = await call(
        http, "POST", "/api/v1/tasks", {"content": 1, "participants": ["nobody"]}
    )
    assert status == 201
    status, error = await call(http, "POST", f"/api/v1/tasks/{task['id']}/distribute")
    assert status == 409
    assert "Agent not found: nobody" in error["details"]
    assert (await call(http, "GET", f"/api/v1/tasks/{task['id']}"))[1]["state"] == "failed"


# -------------------------------------------------------------------------
# Queues, resources, emergency stop
# -------------------------------------------------------------------------


async def test_queues_and_drain(
    http: aiohttp.ClientSession, example_agents: dict[str, bytes]
) -> None:
    agent = await deploy(http, "echo", example_agents["echo"])
    await call(http, "POST", f"/api/v1/agents/{agent['id']}/suspend")
    for n in range(3):
        await call(
            http,
            "POST",
            "/api/v1/messages",
            {"performative": "inform", "receiver": "echo", "content": n, "priority": "high"},
        )
    status, stats = await call(http, "GET", "/api/v1/queues")
    assert status == 200
    assert stats["agents"]["echo"]["queued"] == 3
    assert stats["agents"]["echo"]["high"] == 3
    assert stats["priorities"]["high"] == 3
    assert stats["dead_letters"] == 0
    status, result = await call(http, "POST", "/api/v1/queues/drain", {"timeout_ms": 10})
    assert (status, result) == (200, {"drained": False, "remaining": 3, "timeout_ms": 10})
    await call(http, "POST", f"/api/v1/agents/{agent['id']}/resume")
    status, result = await call(http, "POST", "/api/v1/queues/drain", {"timeout_ms": 5000})
    assert (status, result["drained"], result["remaining"]) == (200, True, 0)
    status, result = await call(http, "POST", "/api/v1/queues/drain")
    assert (status, result["timeout_ms"]) == (200, 60000)
    # An optional body is absent or JSON; blanks are neither (schemathesis found "\t").
    status, result = await call(http, "POST", "/api/v1/queues/drain", "\t")
    assert status == 400
    assert "only blanks" in result["details"]


async def test_resources(http: aiohttp.ClientSession, node: Node) -> None:
    await deploy(http, "one")
    await deploy(http, "two", start=False)
    status, data = await call(http, "GET", "/api/v1/resources")
    assert status == 200
    [mine] = data["nodes"]
    assert mine["node_id"] == node.node_id
    assert mine["agents"] == 2
    assert mine["agents_by_state"] == {"running": 1, "loaded": 1}
    assert mine["memory_rss_bytes"] > 10 * 1024 * 1024
    assert mine["cpu_percent"] >= 0
    assert mine["cpu_count"] >= 1


async def test_emergency_stop(http: aiohttp.ClientSession) -> None:
    for name in ("a", "b", "c"):
        await deploy(http, name)
    assert (await call(http, "POST", "/api/v1/emergency/stop", {"all_agents": False}))[0] == 400
    assert (await call(http, "POST", "/api/v1/emergency/stop", {}))[0] == 400
    status, result = await call(http, "POST", "/api/v1/emergency/stop", {"all_agents": True})
    assert status == 200
    assert result["stopped"] == 3
    (answer,) = result["nodes"].values()
    assert (answer["stopped"], answer["dump"], result["failed"]) == (3, None, {})
    _, agents = await call(http, "GET", "/api/v1/agents")
    assert {a["state"] for a in agents} == {"stopped"}


# -------------------------------------------------------------------------
# Routing: errors, permissions, the OpenAPI document, plugin routes
# -------------------------------------------------------------------------


async def test_unknown_route_and_method_are_json(http: aiohttp.ClientSession) -> None:
    status, error = await call(http, "GET", "/api/v1/agent")
    assert (status, error["error"]) == (404, "Not Found")
    assert "/api/v1/openapi.json" in error["details"]
    async with http.patch("/api/v1/agents") as response:
        assert response.status == 405
        assert "POST" in response.headers["Allow"]
        assert (await response.json())["error"] == "Method Not Allowed"


def core_routes(node: Node) -> list[web.AbstractRoute]:
    app = build_app(node)
    return [r for r in app.router.routes() if r.method != "HEAD"]


async def test_every_route_declares_a_permission(node: Node) -> None:
    routes = core_routes(node)
    assert len(routes) >= 20
    for route in routes:
        permission = permission_of(route.handler)
        assert permission != UNDECLARED, f"{route.method} {route.resource} declares no permission"
        assert permission == PUBLIC or permission in PERMISSIONS


def test_requires_refuses_an_unknown_permission() -> None:
    with pytest.raises(ValueError, match="unknown permission 'delpoy'"):
        requires("delpoy")


async def test_openapi_document_matches_the_router(node: Node, http: aiohttp.ClientSession) -> None:
    status, document = await call(http, "GET", "/api/v1/openapi.json")
    assert status == 200
    assert document["openapi"].startswith("3.")
    documented = {
        (method.upper(), path, operation["x-permission"])
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    }
    served = {
        (route.method, route.resource.canonical, permission_of(route.handler))
        for route in core_routes(node)
        if route.resource is not None
    }
    assert documented == served
    used = {tag for ops in document["paths"].values() for op in ops.values() for tag in op["tags"]}
    assert [t["name"] for t in document["tags"]][:3] == ["health", "agents", "messages"]
    assert {t["name"] for t in document["tags"]} == used
    assert all(t["description"] for t in document["tags"])


async def test_openapi_limits_are_the_node_ceilings(caxton_node_factory: NodeFactory) -> None:
    async with caxton_node_factory.node(
        config={"runtime.max_fuel_limit": 5000, "runtime.default_max_fuel": 1000}
    ) as node:
        schema = build_app(node)[OPENAPI]["components"]["schemas"]["ResourceLimitsInput"]
        assert schema["properties"]["max_fuel"]["maximum"] == 5000


class BrokenPlugin:
    """A plugin whose route fails, to show unexpected errors become a logged 500."""

    @hookimpl
    def caxton_api_routes(self, node: Node) -> list[tuple[str, web.Application]]:
        sub = web.Application()

        @requires("read")
        async def boom(request: web.Request) -> web.Response:
            raise RuntimeError("plugin bug")

        @requires("read")
        async def fine(request: web.Request) -> web.Response:
            return web.json_response({"ok": True})

        sub.router.add_get("/boom", boom)
        sub.router.add_get("/fine", fine)
        return [("/api/v1/plugins/broken", sub)]


async def test_plugin_routes_get_the_middlewares(
    caxton_node_factory: NodeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    async with caxton_node_factory.node(plugins=[BrokenPlugin()]) as node:
        assert node.api_address is not None
        host, port = node.api_address
        async with aiohttp.ClientSession(f"http://{host}:{port}") as session:
            async with session.get("/api/v1/plugins/broken/fine") as response:
                assert response.status == 200
                assert response.headers["X-Request-ID"]
            with caplog.at_level(logging.ERROR, logger="caxton.api"):
                async with session.get("/api/v1/plugins/broken/boom") as response:
                    assert response.status == 500
                    body = await response.json()
                    request_id = response.headers["X-Request-ID"]
    assert body["error"] == "Internal server error"
    assert request_id in body["details"]
    assert "plugin bug" not in json.dumps(body)
    [record] = [r for r in caplog.records if r.name == "caxton.api"]
    assert request_id in record.getMessage()
    assert record.exc_info is not None


def test_every_route_is_documented(node: Node) -> None:
    docs = (Path(__file__).parents[2] / "docs" / "api.md").read_text()
    for route in core_routes(node):
        assert route.resource is not None
        row = f"| `{route.method} {route.resource.canonical}` | {permission_of(route.handler)} |"
        assert row in docs, f"docs/api.md lacks the row {row}"


async def test_a_relative_snapshot_destination_is_refused(
    http: aiohttp.ClientSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative dest would land wherever the node was started: refused before anything."""
    where_the_node_started = tmp_path / "cwd"
    where_the_node_started.mkdir()
    monkeypatch.chdir(where_the_node_started)
    async with http.post("/api/v1/cluster/backups", json={"dest": "snapshots/x"}) as response:
        assert response.status == 400
        answer = await response.json()
    assert "is a relative path" in json.dumps(answer)
    assert list(where_the_node_started.iterdir()) == []

    # ~user with no such user: expanduser raised RuntimeError (a 500)
    dest = "~no-such-user-here/snapshots"
    async with http.post("/api/v1/cluster/backups", json={"dest": dest}) as response:
        assert response.status == 400
        answer = await response.json()
    assert f"cannot expand {dest!r}" in answer["details"], answer
