"""The example agents working together through the ABI: fipa-contract-net in C.

A few lines of routing stand in for the node's router here, so that the agents' own
behaviour is what is tested (the router has its own tests)."""

from __future__ import annotations

import json
from collections import deque
from typing import Any

from caxton.drivers.sandbox import AgentInstance, ResourceLimits
from caxton.sandbox.wasmtime_sandbox import WasmtimeSandbox
from caxton.testing.sandbox import RecordingAgentHost


class RoutedHost(RecordingAgentHost):
    """Fills sender/receiver like the node does and queues messages for delivery."""

    def __init__(self, name: str, outbox: deque[dict[str, Any]]) -> None:
        super().__init__()
        self.name = name
        self.outbox = outbox
        self.current: dict[str, Any] | None = None

    def send(self, message: bytes) -> int:
        status = super().send(message)
        self.outbox.append({**json.loads(message), "sender": self.name})
        return status

    def reply(self, message: bytes) -> int:
        status = super().reply(message)
        assert self.current is not None
        self.outbox.append(
            {
                **json.loads(message),
                "sender": self.name,
                "receiver": self.current["sender"],
                "conversation_id": self.current.get("conversation_id"),
            }
        )
        return status


def run(
    agents: dict[str, tuple[AgentInstance, RoutedHost]],
    outbox: deque[dict[str, Any]],
    inbox: list[dict[str, Any]],
) -> None:
    """Deliver until quiet; messages to unknown names land in ``inbox``."""
    while outbox:
        message = outbox.popleft()
        target = agents.get(message["receiver"])
        if target is None:
            inbox.append(message)
            continue
        instance, host = target
        host.current = message
        assert instance.handle_message(json.dumps(message).encode()) == 0


def test_contract_net_picks_the_cheapest_bid(
    wasmtime_sandbox: WasmtimeSandbox, example_agents: dict[str, bytes]
) -> None:
    outbox: deque[dict[str, Any]] = deque()
    agents: dict[str, tuple[AgentInstance, RoutedHost]] = {}
    for name, wasm in [
        ("manager", "initiator"),
        ("b1", "bidder"),
        ("b2", "bidder"),
        ("b3", "bidder"),
    ]:
        host = RoutedHost(name, outbox)
        module = wasmtime_sandbox.compile(example_agents[wasm])
        instance = wasmtime_sandbox.instantiate(
            module, agent_name=name, limits=ResourceLimits(), host=host
        )
        agents[name] = (instance, host)
    for bidder, price in [("b1", 30), ("b2", 20), ("b3", 80)]:
        outbox.append(
            {
                "performative": "inform",
                "sender": "admin",
                "receiver": bidder,
                "content": {"price": price},
            }
        )
    outbox.append(
        {
            "performative": "request",
            "sender": "client",
            "receiver": "manager",
            "conversation_id": "job-1",
            "content": {"bidders": ["b1", "b2", "b3"], "task": "haul", "budget": 50},
        }
    )
    inbox: list[dict[str, Any]] = []
    run(agents, outbox, inbox)

    # The result answers the request in the request's conversation.
    assert inbox == [
        {
            "performative": "inform",
            "receiver": "client",
            "sender": "manager",
            "conversation_id": "job-1",
            "content": {"winner": "b2", "price": 20},
        }
    ]
    sent = agents["manager"][1].sent_json()
    cfps = [m for m in sent if m["performative"] == "cfp"]
    assert [m["receiver"] for m in cfps] == ["b1", "b2", "b3"]
    assert cfps[0]["content"] == {"task": "haul", "budget": 50}
    # cfps and decisions are one fipa-contract-net conversation.
    contract_net = [m for m in sent if m["receiver"] != "client"]
    assert {m["conversation_id"] for m in contract_net} == {"job-1/cnet"}
    assert {m["protocol"] for m in contract_net} == {"fipa-contract-net"}
    answers = {name: agents[name][1].replies_json() for name in ("b1", "b2", "b3")}
    assert answers["b1"][0] == {
        "performative": "propose",
        "protocol": "fipa-contract-net",
        "content": {"price": 30},
    }
    assert answers["b3"][0]["performative"] == "refuse"  # 80 is over the budget
    assert answers["b2"][-1]["content"] == {"done": True, "price": 20}
    decisions = {
        m["receiver"]: m["performative"] for m in sent if m["performative"].endswith("-proposal")
    }
    # b3's refusal ended its part: only the other proposer is rejected.
    assert decisions == {"b2": "accept-proposal", "b1": "reject-proposal"}


def test_contract_net_without_proposals_fails(
    wasmtime_sandbox: WasmtimeSandbox, example_agents: dict[str, bytes]
) -> None:
    outbox: deque[dict[str, Any]] = deque()
    agents = {}
    for name, wasm in [("manager", "initiator"), ("b1", "bidder")]:
        host = RoutedHost(name, outbox)
        module = wasmtime_sandbox.compile(example_agents[wasm])
        agents[name] = (
            wasmtime_sandbox.instantiate(
                module, agent_name=name, limits=ResourceLimits(), host=host
            ),
            host,
        )
    outbox.append(
        {
            "performative": "request",
            "sender": "client",
            "receiver": "manager",
            "content": {"bidders": ["b1"], "budget": 5},
        }
    )
    inbox: list[dict[str, Any]] = []
    run(agents, outbox, inbox)
    assert [(m["performative"], m["content"]) for m in inbox] == [
        ("failure", {"reason": "no proposals"})
    ]


def test_bidder_answers_not_understood(
    wasmtime_sandbox: WasmtimeSandbox, example_agents: dict[str, bytes]
) -> None:
    host = RecordingAgentHost()
    module = wasmtime_sandbox.compile(example_agents["bidder"])
    bidder = wasmtime_sandbox.instantiate(
        module, agent_name="b", limits=ResourceLimits(), host=host
    )
    bidder.handle_message(b'{"performative":"query-if","sender":"x","content":"?"}')
    assert host.replies_json()[0]["performative"] == "not-understood"
