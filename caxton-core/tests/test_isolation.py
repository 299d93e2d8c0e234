"""What an agent cannot do to its neighbours (issue 13, item 3): two agents answering
each other forever are stopped by the loop guard, and an agent's log is bounded."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from caxton.agents.loop_guard import MAX_HOPS
from caxton.agents.runtime import AGENT_LOG_BURST, AGENT_LOG_PER_SECOND
from caxton.node import Node
from caxton.testing import NodeFactory


@pytest.fixture
async def node(caxton_node_factory: NodeFactory) -> AsyncIterator[Node]:
    async with caxton_node_factory.node() as node:
        yield node


async def deploy(http: aiohttp.ClientSession, name: str, wasm: bytes) -> None:
    body = {"name": name, "wasm_module": base64.b64encode(wasm).decode()}
    async with http.post("/api/v1/agents", json=body) as response:
        assert response.status == 201, await response.text()


async def send(http: aiohttp.ClientSession, **message: Any) -> int:
    async with http.post("/api/v1/messages", json={"performative": "inform", **message}) as r:
        return r.status


def handled(node: Node, name: str) -> int:
    return int(node.agents.get(name).counters.messages_handled)


async def test_two_agents_answering_each_other_are_stopped(
    node: Node, http: aiohttp.ClientSession, example_agents: dict[str, bytes]
) -> None:
    for name in ("ping", "pong", "bystander"):
        await deploy(http, name, example_agents["echo"])
    # ping answers pong, pong answers ping, ... with no one else sending anything
    assert await send(http, sender="pong", receiver="ping", content="ball") in (200, 202)
    await asyncio.sleep(1.0)
    stopped_at = handled(node, "ping") + handled(node, "pong")
    assert stopped_at <= MAX_HOPS + 2
    assert node.agents.loop_guard.refused >= 1
    await asyncio.sleep(0.5)
    assert handled(node, "ping") + handled(node, "pong") == stopped_at  # it stays stopped
    # nobody else is throttled: the bystander answers, and so do ping and pong to others
    async with http.post(
        "/api/v1/messages",
        json={"performative": "request", "receiver": "bystander", "content": "hi", "wait_ms": 5000},
    ) as response:
        assert response.status == 200, await response.text()
    assert await send(http, sender="client", receiver="ping", content="again") in (200, 202)


async def test_an_agent_that_floods_the_log_is_cut_to_its_budget(
    node: Node,
    http: aiohttp.ClientSession,
    example_agents: dict[str, bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="caxton.agent")
    await deploy(http, "chatty", example_agents["log_flood"])
    started = time.monotonic()
    for _ in range(4):  # 20,000 lines of 200 bytes asked for
        assert await send(http, receiver="chatty", content="go") in (200, 202)
    await node.router.drain(10)
    # The count of the lines left out comes with the first line the budget lets through
    # again: give it time to refill one line, then flood once more (25,000 asked in all).
    await asyncio.sleep(2 / AGENT_LOG_PER_SECOND)
    assert await send(http, receiver="chatty", content="go") in (200, 202)
    await node.router.drain(10)
    elapsed = time.monotonic() - started
    records = [r.getMessage() for r in caplog.records if r.name == "caxton.agent"]
    flood = [line for line in records if "log flood" in line]
    dropped = [int(line.split("] ")[1].split(" ")[0]) for line in records if "dropped" in line]
    assert len(flood) <= AGENT_LOG_BURST + AGENT_LOG_PER_SECOND * elapsed + 1
    assert dropped, "the lines left out are counted"
    assert len(flood) + sum(dropped) <= 25_000
    assert sum(dropped) > 10_000  # (those after the last line that went are not said yet)
    assert sum(len(line) for line in records) < 60_000  # of ~4 MB asked for
