"""Agent-to-agent policy: allow-lists by name or pattern, enforced by the router."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from caxton.auth.agent_policy import AgentPolicy
from caxton.errors import ConfigError, Forbidden, ValidationError
from caxton.messaging import Message, Performative, Router
from caxton.node import Node
from caxton.store import Store
from caxton.testing import NodeFactory
from caxton.testing.messaging import Recorder, eventually

EMPTY_MODULE = "AGFzbQEAAAA="


@pytest.fixture
async def router() -> AsyncIterator[Router]:
    r = Router(node_id="n1", cleanup_interval=0)
    await r.start()
    yield r
    await r.close()


def inform(sender: str, receiver: str, **extra: Any) -> Message:
    return Message(Performative.INFORM, sender, receiver, "hi", **extra)


def test_rules_by_name_and_pattern() -> None:
    policy = AgentPolicy({"billing": ["checkout", "ops-*"], "vault-*": ["keeper"]})
    assert policy.allows("checkout", "billing")
    assert policy.allows("ops-7", "billing")
    assert not policy.allows("checkout-evil", "billing")
    assert not policy.allows("ops", "billing")
    assert policy.allows("keeper", "vault-eu")
    assert not policy.allows("checkout", "vault-eu")
    assert policy.allows("anyone", "open-agent")  # no list: everyone
    assert policy.allowed_senders("open-agent") is None


def test_deployed_list_wins_over_config_and_can_be_cleared() -> None:
    policy = AgentPolicy({"billing": ["checkout"]})
    policy.set("billing", ["audit"])
    assert policy.allowed_senders("billing") == ("audit",)
    assert not policy.allows("checkout", "billing")
    policy.set("billing", None)
    assert policy.allowed_senders("billing") == ("checkout",)
    policy.set("billing", [])
    assert not policy.allows("checkout", "billing")  # an empty list admits nobody


@pytest.mark.parametrize("bad", [["ok", ""], "checkout", [1], ["x"] * 257])
def test_malformed_lists_are_refused(bad: Any) -> None:
    with pytest.raises(ValidationError):
        AgentPolicy().set("a", bad)
    with pytest.raises(ConfigError, match=r"security\.agent_policy\.allowed_senders"):
        AgentPolicy({"a": bad})


async def test_router_answers_a_refused_agent_with_refuse(router: Router) -> None:
    policy = AgentPolicy({"b": ["a"]})
    policy.attach(router)
    a, b, c = Recorder(), Recorder(), Recorder()
    for name, box in (("a", a), ("b", b), ("c", c)):
        router.register(name, box)
    await router.send(inform("a", "b"))
    await router.send(inform("c", "b", conversation_id="conv-1", reply_with="r1"))
    await eventually(lambda: c.messages)
    assert b.contents == ["hi"]  # only a's message
    refusal = c.messages[0]
    assert refusal.performative is Performative.REFUSE
    assert refusal.sender == "b"
    assert refusal.conversation_id == "conv-1"
    assert refusal.in_reply_to == "r1"
    assert refusal.content["reason"] == "not-allowed"
    assert "does not accept messages from c" in refusal.content["error"]
    assert a.messages == []


async def test_a_refusal_never_loops(router: Router) -> None:
    """b refuses c and c refuses b: one refuse, no ping-pong."""
    AgentPolicy({"b": ["a"], "c": ["a"]}).attach(router)
    b, c = Recorder(), Recorder()
    router.register("b", b)
    router.register("c", c)
    await router.send(inform("c", "b"))
    await eventually(lambda: c.messages)
    assert router.pending() == 0
    assert [m.performative for m in c.messages] == [Performative.REFUSE]
    assert b.messages == []


async def test_unregistered_sender_is_forbidden(router: Router) -> None:
    AgentPolicy({"b": ["a"]}).attach(router)
    b = Recorder()
    router.register("b", b)
    with pytest.raises(Forbidden, match="agent b does not accept messages from client-1"):
        await router.send(inform("client-1", "b"))
    assert b.messages == []


async def test_without_rules_the_router_has_no_gate(router: Router) -> None:
    policy = AgentPolicy()
    policy.attach(router)
    assert router.gate is None
    policy.set("b", ["a"])
    assert router.gate is not None
    policy.set("b", None)
    assert router.gate is None


async def test_deployed_lists_survive_a_restart(tmp_path: Path) -> None:
    store = Store(tmp_path / "local.db")
    await store.open()
    policy = AgentPolicy()
    await policy.load(store)
    policy.set("billing", ["checkout"])
    policy.set("gone", ["x"])
    policy.set("gone", None)
    await store.close()
    store = Store(tmp_path / "local.db")
    await store.open()
    try:
        again = AgentPolicy()
        await again.load(store)
        assert again.allowed_senders("billing") == ("checkout",)
        assert again.allowed_senders("gone") is None
    finally:
        await store.close()


# -------------------------------------------------------------------------
# Through the REST API of a node
# -------------------------------------------------------------------------


async def rest(
    http: aiohttp.ClientSession, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    async with http.request(method, path, json=body) as response:
        text = await response.text()
        return response.status, json.loads(text) if text else None


@pytest.fixture
async def node(caxton_node_factory: NodeFactory) -> AsyncIterator[Node]:
    config = {"security.agent_policy.allowed_senders": {"config-guarded": ["ops-*"]}}
    async with caxton_node_factory.node(config=config) as node:
        yield node


async def test_allowed_senders_at_deploy_are_enforced(
    node: Node, http: aiohttp.ClientSession
) -> None:
    body = {"name": "guarded", "wasm_module": EMPTY_MODULE, "allowed_senders": ["ops-*"]}
    status, _ = await rest(http, "POST", "/api/v1/agents", body)
    assert status == 201
    message = {"performative": "inform", "receiver": "guarded", "content": 1}
    status, answer = await rest(http, "POST", "/api/v1/messages", {**message, "sender": "intruder"})
    assert status == 403
    assert "agent guarded does not accept messages from intruder" in answer["details"]
    # A waiting client has an endpoint: it is answered with refuse.
    status, answer = await rest(
        http,
        "POST",
        "/api/v1/messages",
        {**message, "performative": "request", "sender": "intruder", "wait_ms": 5000},
    )
    assert status == 200, answer
    assert answer["reply"]["performative"] == "refuse"
    status, answer = await rest(http, "POST", "/api/v1/messages", {**message, "sender": "ops-1"})
    assert status == 202, answer


async def test_config_policy_applies_until_a_deploy_gives_its_own(
    node: Node, http: aiohttp.ClientSession
) -> None:
    await rest(
        http, "POST", "/api/v1/agents", {"name": "config-guarded", "wasm_module": EMPTY_MODULE}
    )
    message = {"performative": "inform", "receiver": "config-guarded", "content": 1}
    assert (await rest(http, "POST", "/api/v1/messages", {**message, "sender": "x"}))[0] == 403
    assert (await rest(http, "POST", "/api/v1/messages", {**message, "sender": "ops-2"}))[0] == 202


async def test_failed_deploy_keeps_the_existing_agents_list(
    node: Node, http: aiohttp.ClientSession
) -> None:
    body = {"name": "kept", "wasm_module": EMPTY_MODULE, "allowed_senders": ["a"]}
    assert (await rest(http, "POST", "/api/v1/agents", body))[0] == 201
    again = {**body, "allowed_senders": ["*"]}
    assert (await rest(http, "POST", "/api/v1/agents", again))[0] == 409  # name taken
    policy = node.context.services["agent_policy"]
    assert policy.allowed_senders("kept") == ("a",)


async def test_malformed_allowed_senders_are_a_400(http: aiohttp.ClientSession) -> None:
    body = {"name": "x", "wasm_module": EMPTY_MODULE, "allowed_senders": "everyone"}
    assert (await rest(http, "POST", "/api/v1/agents", body))[0] == 400
