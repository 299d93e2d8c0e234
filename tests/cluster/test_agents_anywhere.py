"""Agents by id through any node, in one process: three nodes with auth on (the tcp
transport, a shared gossip key), the echo agent on n3 driven entirely through n1's REST
API; the caller's roles checked and audited on both nodes."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner
from test_cluster_routing import eventually
from test_placement_cluster import FAST

from caxton.auth.keys import ApiKeyStore
from caxton.cli.main import make_cli
from caxton.client import ApiError, AsyncClient
from caxton.messaging import Message, Performative
from caxton.node import Node
from caxton.testing import NodeFactory

AUTH = {"security.auth_enabled": True}
#: n3's own role table: its operators may not start, stop, suspend or resume agents.
STRICT_N3 = {"security.roles": {"operator": ["read", "deploy", "remove", "send"]}}

Call = tuple[int, Any, Mapping[str, str]]


async def new_key(node: Node, role: str) -> str:
    keys = ApiKeyStore(node.store)
    await keys.setup()
    key, _ = await keys.create(role)
    return key


async def call(node: Node, method: str, path: str, key: str, body: Any = None) -> Call:
    assert node.api_address is not None
    host, port = node.api_address
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method, f"http://{host}:{port}{path}", json=body, headers={"X-API-Key": key}
        ) as response,
    ):
        text = await response.text()
        return response.status, (await response.json()) if text else None, response.headers


def audit(node: Node, action: str) -> list[dict[str, Any]]:
    guard = node.context.services["auth"]
    return [e for e in guard.audit.query(limit=1000) if e["action"] == action]


async def echo_on_n3(n1: Node, key: str, echo: bytes) -> str:
    """Deploy echo on n3 through n1; its path, once n1's registry knows it."""
    _, agent, _ = await call(
        n1, "POST", "/api/v1/agents", key,
        {"name": "echo", "wasm_module": base64.b64encode(echo).decode(), "target_node": "n3"},
    )  # fmt: skip
    await eventually(lambda: any(e.name == "echo" for e in n1.cluster.registry.entries("n3")))
    return f"/api/v1/agents/{agent['id']}"


@pytest.fixture
async def factory(tmp_path: Path) -> AsyncIterator[NodeFactory]:
    factory = NodeFactory(tmp_path, config={**FAST, **AUTH})
    factory.register_driver("transport", "tcp", "caxton_transport_tcp.driver:TcpTransport")
    yield factory
    await factory.stop_all()


@pytest.fixture
async def nodes(factory: NodeFactory) -> list[Node]:
    first = factory.build("n1", bootstrap=True)
    await first.start()
    seed = f"127.0.0.1:{first.cluster_address[1]}"
    await factory.build("n2", join=[seed], config={"security.auth_enabled": False}).start()
    await factory.build("n3", join=[seed], config=STRICT_N3).start()
    await eventually(lambda: all(n.membership.cluster_size_estimate() == 3 for n in factory.nodes))
    return list(factory.nodes)


async def test_an_agent_on_n3_is_managed_through_n1(nodes: list[Node], echo: bytes) -> None:
    n1, _, n3 = nodes
    admin = await new_key(n1, "admin")
    status, agent, _ = await call(
        n1, "POST", "/api/v1/agents", admin,
        {"name": "echo", "wasm_module": base64.b64encode(echo).decode(), "target_node": "n3"},
    )  # fmt: skip
    assert (status, agent["node_id"]) == (201, "n3"), agent
    path = f"/api/v1/agents/{agent['id']}"
    await eventually(lambda: any(e.name == "echo" for e in n1.cluster.registry.entries("n3")))

    status, got, _ = await call(n1, "GET", path, admin)
    assert (status, got["node_id"], got["state"]) == (200, "n3", "running")
    for action, state in (("suspend", "suspended"), ("resume", "running"),
                          ("stop", "stopped"), ("start", "running")):  # fmt: skip
        status, changed, _ = await call(n1, "POST", f"{path}/{action}", admin)
        assert (status, changed["state"]) == (200, state), changed
        assert n3.agents.get("echo").state.value == state
        for node in (n1, n3):
            [entry] = audit(node, f"{action}_agent")
            assert entry["result"] == "success", entry
        [on_n1], [on_n3] = audit(n1, f"{action}_agent"), audit(n3, f"{action}_agent")
        assert on_n1["identity"] == on_n3["identity"]
        assert on_n1["identity"].startswith("key:")
        assert on_n3["source"].startswith("node:n1")
    status, swapped, _ = await call(
        n1, "PUT", path, admin, {"resource_limits": {"max_fuel": 123_456}}
    )
    assert (status, swapped["limits"]["max_fuel"]) == (200, 123_456)
    assert n3.agents.get("echo").limits.max_fuel == 123_456

    status, removed, _ = await call(n1, "DELETE", path, admin)
    assert status == 204, removed
    assert "echo" not in n3.agents
    assert [e["result"] for e in audit(n3, "remove_agent")] == ["success"]
    status, error, _ = await call(n1, "GET", path, admin)
    assert status == 404, error


async def test_roles_are_checked_on_both_nodes(nodes: list[Node], echo: bytes) -> None:
    n1, n2, n3 = nodes
    keys = {role: await new_key(n1, role) for role in ("admin", "operator", "viewer")}
    path = await echo_on_n3(n1, keys["admin"], echo)

    # A viewer may read through n1, and is refused a change by n1 itself.
    status, got, _ = await call(n1, "GET", path, keys["viewer"])
    assert (status, got["node_id"]) == (200, "n3")
    status, error, _ = await call(n1, "POST", f"{path}/suspend", keys["viewer"])
    assert status == 403, error
    assert [e["result"] for e in audit(n1, "suspend_agent")] == ["denied"]
    assert audit(n3, "suspend_agent") == []

    # n1 lets an operator suspend; n3's own role table does not.
    status, error, _ = await call(n1, "POST", f"{path}/suspend", keys["operator"])
    assert status == 403, error
    assert "node 'n3'" in error["details"]
    assert "operator" in error["details"]
    assert [e["result"] for e in audit(n3, "suspend_agent")] == ["denied"]
    assert n3.agents.get("echo").state.value == "running"

    # n2 authenticates no one: n3 refuses what it forwards, without an identity.
    status, error, _ = await call(n2, "POST", f"{path}/suspend", "")
    assert status == 403, error
    assert "without an identity" in error["details"]
    assert n3.agents.get("echo").state.value == "running"


async def test_the_cluster_listing_filters_and_pages(nodes: list[Node], echo: bytes) -> None:
    n1, _, _ = nodes
    admin = await new_key(n1, "admin")
    wasm = base64.b64encode(echo).decode()
    for name, node in (("echo-a", "n1"), ("echo-b", "n2"), ("echo-c", "n3"), ("other", "n3")):
        status, agent, _ = await call(
            n1, "POST", "/api/v1/agents", admin,
            {"name": name, "wasm_module": wasm, "target_node": node},
        )  # fmt: skip
        assert status == 201, agent
    await eventually(lambda: len(n1.cluster.registry.entries()) == 4)

    status, local, _ = await call(n1, "GET", "/api/v1/agents", admin)
    assert [a["name"] for a in local] == ["echo-a"]  # the default stays local
    status, every, headers = await call(n1, "GET", "/api/v1/agents?scope=cluster", admin)
    assert status == 200, every
    assert [(a["name"], a["node_id"], a["source"]) for a in every] == [
        ("echo-a", "n1", "node"),
        ("echo-b", "n2", "node"),
        ("echo-c", "n3", "node"),
        ("other", "n3", "node"),
    ]
    assert every[2]["counters"]["messages_handled"] == 0
    assert headers["X-Total-Count"] == "4"
    # Each listed agent says where it is replicated, as its detail does (the fault
    # campaign's checker reads every agent's replica set from the local list).
    _, detail, _ = await call(n1, "GET", f"/api/v1/agents/{every[2]['id']}", admin)
    listed = every[2]["replication"]
    assert (listed["holders"], listed["generation"]) == (
        detail["replication"]["holders"], detail["replication"]["generation"]
    )  # fmt: skip
    assert sorted(local[0]["replication"]["holders"]) == ["n2", "n3"]
    _, on_n3, _ = await call(n1, "GET", "/api/v1/agents?scope=cluster&node=n3", admin)
    assert [a["name"] for a in on_n3] == ["echo-c", "other"]
    _, echoes, headers = await call(
        n1, "GET", "/api/v1/agents?scope=cluster&name=echo-*&offset=1&limit=1", admin
    )
    assert ([a["name"] for a in echoes], headers["X-Total-Count"]) == (["echo-b"], "3")
    _, none, _ = await call(n1, "GET", "/api/v1/agents?scope=cluster&state=stopped", admin)
    assert none == []
    status, error, _ = await call(n1, "GET", "/api/v1/agents?scope=everywhere", admin)
    assert status == 400, error


async def test_an_agents_state_and_logs_through_n1(nodes: list[Node], echo: bytes) -> None:
    """The key/value state of an agent on n3, read and changed through n1 (durable on
    n3 before n1 answers), its log lines read through n1; values need update, on both
    nodes, and changes are audited on both."""
    n1, _, n3 = nodes
    keys = {role: await new_key(n1, role) for role in ("admin", "operator", "viewer")}
    path = await echo_on_n3(n1, keys["admin"], echo)
    runtime = n3.agents.runtime("echo")

    status, entry, _ = await call(n1, "PUT", f"{path}/state/greeting", keys["admin"],
                                  {"value": "hello"})  # fmt: skip
    assert (status, entry["value"]) == (200, "hello"), entry
    assert runtime.kv == {b"greeting": b"hello"}
    assert runtime.committed == runtime.version  # durable before the answer
    status, entry, _ = await call(
        n1, "PUT", f"{path}/state/_gE?encoding=base64", keys["admin"], {"value_base64": "/w=="}
    )
    assert (status, entry["key"], entry["value"]) == (200, None, None), entry
    assert runtime.kv[b"\xfe\x01"] == b"\xff"
    status, listing, _ = await call(n1, "GET", f"{path}/state", keys["viewer"])
    assert status == 200, listing
    assert [(e["key"], e["key_base64"], e["size"]) for e in listing["entries"]] == [
        ("greeting", "Z3JlZXRpbmc=", 5),
        (None, "/gE=", 1),
    ]
    assert (listing["keys_total"], listing["next"]) == (2, None)
    _, page, _ = await call(n1, "GET", f"{path}/state?limit=1", keys["viewer"])
    assert (len(page["entries"]), page["next"]) == (1, "Z3JlZXRpbmc=")
    _, rest, _ = await call(n1, "GET", f"{path}/state?after=Z3JlZXRpbmc%3D", keys["viewer"])
    assert [e["key_base64"] for e in rest["entries"]] == ["/gE="]

    # Values need update: n1 refuses the viewer, n3 (its own roles) the operator.
    status, error, _ = await call(n1, "GET", f"{path}/state/greeting", keys["viewer"])
    assert status == 403, error
    status, error, _ = await call(n1, "PUT", f"{path}/state/greeting", keys["operator"],
                                  {"value": "nope"})  # fmt: skip
    assert status == 403, error
    assert "node 'n3'" in error["details"]
    assert runtime.kv[b"greeting"] == b"hello"
    status, got, _ = await call(n1, "GET", f"{path}/state/greeting", keys["admin"])
    assert (status, got["value"], got["value_base64"]) == (200, "hello", "aGVsbG8=")

    status, _, _ = await call(n1, "DELETE", f"{path}/state/greeting", keys["admin"])
    assert status == 204
    assert b"greeting" not in runtime.kv
    status, error, _ = await call(n1, "DELETE", f"{path}/state/greeting", keys["admin"])
    assert status == 404, error
    assert "has no key 'greeting'" in error["details"]
    # Newest first: n1 let the operator through and saw n3 refuse; n3 denied them.
    assert [e["result"] for e in audit(n1, "put_agent_state_key")] == [
        "failure", "success", "success",
    ]  # fmt: skip
    assert [e["result"] for e in audit(n3, "put_agent_state_key")] == [
        "denied", "success", "success",
    ]  # fmt: skip
    for node in (n1, n3):
        assert [e["result"] for e in audit(node, "delete_agent_state_key")][-1] == "success"

    runtime.log(2, "a line on n3")
    status, logs, _ = await call(n1, "GET", f"{path}/logs", keys["viewer"])
    assert status == 200, logs
    assert [line["text"] for line in logs["lines"]] == ["a line on n3"]


async def test_the_consoles_views_of_every_node(nodes: list[Node], echo: bytes) -> None:
    """Latency histograms, conversations with their messages and dead letters, gathered
    from every node through n1 (what the console draws)."""
    n1, _, n3 = nodes
    viewer = await new_key(n1, "viewer")
    sender = await new_key(n1, "admin")
    await echo_on_n3(n1, sender, echo)
    for n in range(3):
        status, answer, _ = await call(n1, "POST", "/api/v1/messages", sender, {
            "performative": "request", "receiver": "echo", "content": n,
            "conversation_id": f"talk-{n}", "protocol": "fipa-request", "wait_ms": 5000,
        })  # fmt: skip
        assert (status, answer["reply"]["content"]) == (200, n), answer

    status, latency, _ = await call(n1, "GET", "/api/v1/cluster/latency", viewer)
    assert status == 200, latency
    assert [node["node_id"] for node in latency["nodes"]] == ["n1", "n2", "n3"]
    by_node = {node["node_id"]: node for node in latency["nodes"]}
    assert by_node["n1"]["remote_routing"]["count"] >= 3  # each request forwarded to n3
    assert by_node["n1"]["messages"] >= 3
    for node in latency["nodes"]:
        for histogram in (node["routing"], node["remote_routing"]):
            assert histogram["buckets"][-1] == [None, histogram["count"]]  # +Inf: all

    status, listed, _ = await call(
        n1, "GET", "/api/v1/conversations?scope=cluster&participant=echo", viewer
    )
    assert status == 200, listed
    assert {c["conversation_id"] for c in listed["conversations"]} == {"talk-0", "talk-1", "talk-2"}
    status, talk, _ = await call(n1, "GET", "/api/v1/conversations/talk-1?scope=cluster", viewer)
    assert status == 200, talk
    arrows = [(m["sender"], m["receiver"], m["performative"]) for m in talk["messages"]]
    client = arrows[0][0]
    assert arrows == [(client, "echo", "request"), ("echo", client, "inform")], arrows
    status, local, _ = await call(n1, "GET", "/api/v1/conversations/talk-1", viewer)
    assert (status, len(local["messages"])) == (200, 2)  # n1 saw both: it sent and got

    ghost = Message(Performative.INFORM, sender="nobody", receiver="echo", content="late")
    n3.router.dead_letter(ghost, "expired: a test")
    await n3.store.flush()
    status, dead, _ = await call(
        n1, "GET", "/api/v1/queues/dead-letters?scope=cluster&receiver=echo", viewer
    )
    assert status == 200, dead
    assert [(d["node_id"], d["reason"]) for d in dead["dead_letters"]] == [
        ("n3", "expired: a test")
    ]
    _, here, _ = await call(n1, "GET", "/api/v1/queues/dead-letters?receiver=echo", viewer)
    assert here["dead_letters"] == []


async def test_an_agent_moves_through_any_node_from_the_client_and_the_cli(
    nodes: list[Node], echo: bytes
) -> None:
    """``caxton.client``'s move_agent and ``caxton agent move`` sent to n1 move an agent
    of n3 to another node; the caller's roles are checked by n1 and by n3, and both
    audit the move."""
    n1, _, n3 = nodes
    keys = {role: await new_key(n1, role) for role in ("admin", "operator", "viewer")}
    path = await echo_on_n3(n1, keys["admin"], echo)
    agent_id = path.rsplit("/", 1)[-1]
    assert n1.api_address is not None
    url = "http://{}:{}".format(*n1.api_address)

    async with AsyncClient(url, api_key=keys["viewer"]) as viewer:
        with pytest.raises(ApiError) as refused:
            await viewer.move_agent(agent_id, "n1")
    assert refused.value.status == 403
    async with AsyncClient(url, api_key=keys["operator"]) as operator:
        with pytest.raises(ApiError) as refused:  # n1 allows it, n3's own roles do not
            await operator.move_agent(agent_id, "n1")
    assert (refused.value.status, "node 'n3'" in refused.value.details) == (403, True)
    assert "echo" in n3.agents

    async with AsyncClient(url, api_key=keys["admin"]) as admin:
        moved = await admin.move_agent(agent_id, "n1")
        assert (moved["node_id"], moved["moved_from"]) == ("n1", "n3")
        assert (await admin.get_agent(agent_id))["node_id"] == "n1"
    assert "echo" in n1.agents
    assert "echo" not in n3.agents
    # Newest first: the admin's move, the operator's (n3 refused it), the viewer's.
    assert [e["result"] for e in audit(n1, "move_agent")] == ["success", "failure", "denied"]
    assert [e["result"] for e in audit(n3, "move_agent")] == ["success", "denied"]

    args = ["agent", "move", "echo", "--to", "n3", "--json", "--api-url", url]
    env = {"CAXTON_API_KEY": keys["admin"]}
    result = await asyncio.to_thread(CliRunner().invoke, make_cli(), args, env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["node_id"] == "n3"
    assert "echo" in n3.agents
    async with AsyncClient(url, api_key=keys["admin"]) as admin:
        reply = await admin.send_message("echo", "still here", wait=5)
    assert reply["reply"]["content"] == "still here"
