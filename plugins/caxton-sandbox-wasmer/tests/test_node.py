"""The example agents end to end on a real node whose sandbox is wasmer (CPython 3.10).

A real node (caxton.testing.NodeFactory: real router, real SQLite store, the agent
manager) built with ``--plugin sandbox=wasmer``; a Python endpoint on the router plays
the client.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import needs_wasmer

from caxton.messaging import Message
from caxton.testing import NodeFactory
from caxton_sandbox_wasmer.driver import WasmerSandbox

pytestmark = needs_wasmer
ids = itertools.count()


class Client:
    """A Python endpoint on the node's router; ``ask`` returns the reply."""

    def __init__(self, router: Any, name: str = "client") -> None:
        self.router = router
        self.name = name
        self.inbox: list[Message] = []
        router.register(name, self.inbox.append)

    def message(self, receiver: str, content: Any = None, **fields: Any) -> Message:
        fields.setdefault("performative", "request")
        fields.setdefault("conversation_id", f"conv-{next(ids)}")
        return Message(sender=self.name, receiver=receiver, content=content, **fields)

    async def ask(self, receiver: str, content: Any = None, **fields: Any) -> Message:
        message = self.message(receiver, content, **fields)
        await self.router.send(message)
        return await self.wait_for(lambda m: m.in_reply_to == message.message_id)

    async def wait_for(self, predicate: Callable[[Message], bool]) -> Message:
        for _ in range(3000):
            found = next((m for m in self.inbox if predicate(m)), None)
            if found is not None:
                return found
            await asyncio.sleep(0.01)
        raise AssertionError("the expected message never arrived")


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Any]:
    factory = NodeFactory(tmp_path)
    factory.register_driver("sandbox", "wasmer", WasmerSandbox)
    async with factory.node(plugin_options=["sandbox=wasmer"]) as node:
        yield node


async def test_the_node_runs_on_the_wasmer_sandbox(node: Any) -> None:
    assert isinstance(node.sandbox, WasmerSandbox)


@pytest.mark.parametrize("example", ["echo", "echo_c"])
async def test_echo(node: Any, example_agents: dict[str, bytes], example: str) -> None:
    client = Client(node.router)
    await node.agents.deploy("echo", example_agents[example])
    reply = await client.ask("echo", {"text": "hi", "n": [1, 2]})
    assert reply.performative == "inform"
    assert reply.content == {"text": "hi", "n": [1, 2]}


async def test_counter_keeps_state_in_the_node_store(
    node: Any, example_agents: dict[str, bytes]
) -> None:
    client = Client(node.router)
    await node.agents.deploy("counter", example_agents["counter"])
    counts = [(await client.ask("counter", "tick")).content["count"] for _ in range(3)]
    assert counts == [1, 2, 3]


async def test_contract_net_between_wasm_agents(
    node: Any, example_agents: dict[str, bytes]
) -> None:
    client = Client(node.router)
    for name, price in (("b1", 120), ("b2", 80), ("b3", 300)):
        await node.agents.deploy(name, example_agents["bidder"])
        await node.router.send(client.message(name, {"price": price}, performative="inform"))
    await node.agents.deploy("initiator", example_agents["initiator"])
    await node.router.send(
        client.message("initiator", {"bidders": ["b1", "b2", "b3"], "task": "paint", "budget": 150})
    )
    result = await client.wait_for(lambda m: m.sender == "initiator")
    assert result.performative == "inform"
    assert result.content == {"winner": "b2", "price": 80}


@pytest.mark.parametrize(
    ("example", "limits", "wording"),
    [
        ("infinite_loop", {"max_fuel": 1_000_000}, "fuel exhausted (CPU limit reached)"),
        (
            "infinite_loop",
            {"max_fuel": 10_000_000_000, "max_execution_time_ms": 100},
            "Execution timeout after 100ms",
        ),
        ("memory_bomb", {"max_memory_bytes": 1024 * 1024}, "memory limit exceeded"),
        ("deep_recursion", {}, "stack overflow"),
        ("trap", {}, "unreachable"),
    ],
)
async def test_a_runaway_agent_fails_and_the_others_keep_running(
    node: Any, example_agents: dict[str, bytes], example: str, limits: dict[str, int], wording: str
) -> None:
    client = Client(node.router)
    await node.agents.deploy("echo", example_agents["echo"])
    await node.agents.deploy("runaway", example_agents[example], limits=limits)
    reply = await client.ask("runaway", "go")
    assert reply.performative == "failure"
    assert wording in reply.content
    assert (await client.ask("echo", "still here")).content == "still here"
