"""A message over the agent's max_message_bytes is refused with a failure, not a crash."""

from __future__ import annotations

from pathlib import Path

from caxton.drivers import ResourceLimits
from caxton.messaging import Message, Performative
from caxton.testing import NodeFactory


async def test_oversized_message_answers_failure_and_agent_keeps_running(
    tmp_path: Path, example_agents: dict[str, bytes]
) -> None:
    async with NodeFactory(tmp_path).node("n1") as node:
        limits = ResourceLimits(max_message_bytes=1024)
        agent = await node.agents.deploy("small", example_agents["echo"], limits=limits)
        replies: list[Message] = []
        node.router.register("client", replies.append)
        big = Message(Performative.REQUEST, sender="client", receiver="small", content="x" * 4096)
        await node.router.send(big)
        await node.router.send(
            Message(Performative.REQUEST, sender="client", receiver="small", content="hi")
        )
        await node.router.drain(5)
        assert [r.performative for r in replies] == [Performative.FAILURE, Performative.INFORM]
        assert "1024" in str(replies[0].content)
        assert agent.counters.crashes == 0
        assert agent.state.value == "running"
