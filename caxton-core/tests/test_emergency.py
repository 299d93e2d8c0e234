"""Emergency measures on one node, each with its reversal: suspension by priority, load
shedding, circuit breakers (at once and gradually), stop with a state dump and start
with the queued messages re-sent."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from caxton.node import Node
from caxton.testing import NodeFactory


async def api(node: Node, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    assert node.api_address is not None
    host, port = node.api_address
    async with (
        aiohttp.ClientSession(f"http://{host}:{port}") as session,
        session.request(method, path, json=body) as response,
    ):
        return response.status, await response.json(content_type=None)


async def deploy(node: Node, wasm: bytes, name: str, priority: str = "normal") -> dict[str, Any]:
    status, agent = await api(
        node,
        "POST",
        "/api/v1/agents",
        {"name": name, "wasm_module": base64.b64encode(wasm).decode(), "priority": priority},
    )
    assert status == 201, agent
    return dict(agent)


async def tick(node: Node, name: str) -> tuple[int, Any]:
    return await api(
        node,
        "POST",
        "/api/v1/messages",
        {"performative": "request", "receiver": name, "content": "tick", "wait_ms": 5000},
    )


def states(node: Node) -> dict[str, str]:
    return {a.name: a.state.value for a in node.agents.list()}


@pytest.fixture
async def node(caxton_node_factory: NodeFactory, example_agents: dict[str, bytes]) -> Any:
    async with caxton_node_factory.node("n1") as node:
        counter = example_agents["counter"]
        for name, priority in (("low1", "low"), ("low2", "low"), ("mid", "normal")):
            await deploy(node, counter, name, priority)
        await deploy(node, counter, "top", "critical")
        yield node


async def test_priority_is_recorded_and_refused_when_unknown(node: Node) -> None:
    status, agents = await api(node, "GET", "/api/v1/agents")
    assert {a["name"]: a["priority"] for a in agents} == {
        "low1": "low",
        "low2": "low",
        "mid": "normal",
        "top": "critical",
    }
    status, error = await api(
        node, "POST", "/api/v1/agents", {"name": "x", "wasm_module": "AA==", "priority": "meh"}
    )
    assert status == 400, error


async def test_suspend_by_priority_then_resume(node: Node) -> None:
    status, result = await api(node, "POST", "/api/v1/emergency/suspend", {"priority": "low"})
    assert status == 200, result
    assert result["nodes"]["n1"]["suspended"] == ["low1", "low2"]
    assert states(node) == {"low1": "suspended", "low2": "suspended", "mid": "running",
                            "top": "running"}  # fmt: skip
    status, result = await api(node, "POST", "/api/v1/emergency/resume", {"priority": "low"})
    assert result["nodes"]["n1"]["resumed"] == ["low1", "low2"]
    assert set(states(node).values()) == {"running"}


async def test_shed_load_takes_the_lowest_priority_first(node: Node) -> None:
    status, result = await api(node, "POST", "/api/v1/emergency/shed-load", {"percentage": 50})
    assert status == 200, result
    assert result["nodes"]["n1"] == {
        "node_id": "n1",
        "action": "shed",
        "suspended": ["low1", "low2"],
        "running": 2,
    }
    status, result = await api(node, "POST", "/api/v1/emergency/resume", {"reason": "shed"})
    assert result["nodes"]["n1"]["resumed"] == ["low1", "low2"]
    assert set(states(node).values()) == {"running"}


async def test_circuit_breaker_fails_fast_then_closes_gradually(node: Node) -> None:
    status, result = await api(
        node, "POST", "/api/v1/circuit-breakers/activate", {"agents": ["mid"]}
    )
    assert result["nodes"]["n1"]["open"] == ["mid"]
    status, error = await tick(node, "mid")
    assert status == 503
    assert error["error"] == "Circuit breaker open"
    assert "circuit breaker open for agent mid" in error["details"]
    assert (await tick(node, "top"))[0] == 200
    status, result = await api(
        node, "POST", "/api/v1/circuit-breakers/reset", {"agents": ["mid"], "duration_ms": 400}
    )
    assert result["nodes"]["n1"]["closing"] == ["mid"]
    await asyncio.sleep(0.45)
    assert (await tick(node, "mid"))[0] == 200
    assert await api(node, "GET", "/api/v1/circuit-breakers") == (
        200,
        {"open": [], "closing": []},
    )
    await api(node, "POST", "/api/v1/circuit-breakers/activate", {"agents": "*"})
    assert (await tick(node, "top"))[0] == 503
    await api(node, "POST", "/api/v1/circuit-breakers/reset", {})
    assert (await tick(node, "top"))[0] == 200


async def test_stop_with_a_dump_then_start_replays_the_queued_messages(
    node: Node, tmp_path: Path
) -> None:
    assert (await tick(node, "mid"))[1]["reply"]["content"] == {"count": 1}
    mid = node.agents.get("mid")
    await node.agents.suspend(mid.id)
    for n in range(2):
        status, _ = await api(
            node,
            "POST",
            "/api/v1/messages",
            {"performative": "inform", "receiver": "mid", "content": f"queued {n}"},
        )
        assert status in (200, 202)
    dump = tmp_path / "dump"
    status, error = await api(
        node,
        "POST",
        "/api/v1/emergency/stop",
        {"all_agents": True, "preserve_state": True, "dump_to": str(dump)},
    )
    assert status == 400  # an existing directory only; nothing was stopped
    assert "not an existing directory" in error["details"]
    assert "stopped" not in set(states(node).values())
    dump.mkdir()
    status, result = await api(
        node,
        "POST",
        "/api/v1/emergency/stop",
        {"all_agents": True, "preserve_state": True, "dump_to": str(dump)},
    )
    assert status == 200, result
    assert result["stopped"] == 4
    assert set(states(node).values()) == {"stopped"}
    written = json.loads((dump / "n1" / "state.json").read_text())
    saved = {a["name"]: a for a in written["agents"]}
    assert [m["content"] for m in saved["mid"]["queued"]] == ["queued 0", "queued 1"]
    assert saved["mid"]["kv"] == {
        base64.b64encode(b"count").decode(): base64.b64encode(b"1").decode()
    }
    assert (dump / "n1" / written["backup"]).is_file()

    status, result = await api(node, "POST", "/api/v1/emergency/start", {"replay_from": str(dump)})
    assert status == 200, result
    assert result["nodes"]["n1"]["started"] == ["low1", "low2", "mid", "top"]
    assert result["nodes"]["n1"]["replayed"] == 2
    # 1 before, the 2 queued ones re-sent, then this one.
    assert (await tick(node, "mid"))[1]["reply"]["content"] == {"count": 4}
