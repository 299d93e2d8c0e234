"""The parts of placement and failover that need no second node: the placement order,
specs and replicas on the wire, sealing of privileged control ops, the replica tables,
and the deploy route's placement fields on a node that does not cluster.
(Several nodes: tests/cluster/test_placement_cluster.py, test_failover_*.py.)"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from caxton.cluster import wire
from caxton.cluster.failover import Replica, wins
from caxton.cluster.placement import DeploySpec, RemoteError, unpack_answer
from caxton.cluster.trust import PeerTrust
from caxton.errors import Forbidden, ValidationError
from caxton.node import Node
from caxton.store import Store
from caxton.testing import NodeFactory

KEY = base64.b64encode(os.urandom(32)).decode()
SHA = "ab" * 32
EMPTY_MODULE = "AGFzbQEAAAA="


def test_the_newer_placement_wins_then_the_lower_node_id() -> None:
    assert wins(2, "n3", 1, "n1")
    assert not wins(1, "n1", 2, "n3")
    assert wins(1, "n1", 1, "n2")
    assert not wins(1, "n2", 1, "n1")


def test_a_spec_travels_and_malformed_ones_are_refused() -> None:
    spec = DeploySpec(
        "worker",
        limits={"max_fuel": 5},
        restart_policy={"policy": "never"},
        allowed_senders=("a", "b"),
        start=False,
        agent_id="6f1c8e2a-0000-4000-8000-000000000000",
    )
    again = DeploySpec.from_wire(wire.unpack(wire.pack(spec.to_wire())))
    assert again.to_wire() == spec.to_wire()
    assert again.allowed_senders == ["a", "b"]
    assert again.start is False
    for bad in (
        None,
        {"limits": {}},
        {"name": "x", "limits": [1]},
        {"name": "x", "allowed_senders": "everyone"},
        {"name": "x", "agent_id": 7},
        {"name": "x", "surprise": 1},
    ):
        with pytest.raises(ValidationError, match="malformed deployment spec"):
            DeploySpec.from_wire(bad)


def test_a_replica_travels_and_malformed_ones_are_refused() -> None:
    replica = Replica("id-1", "worker", "n3", 2, SHA, DeploySpec("worker"), ("n1", "n2"))
    assert Replica.from_wire("n3", wire.unpack(wire.pack(replica.to_wire()))) == replica
    assert replica.record()["owner"] == "n3"
    for broken in ({**replica.to_wire(), "module_sha256": "short"}, {"agent_id": "x"}, None):
        with pytest.raises(ValidationError, match="malformed replica"):
            Replica.from_wire("n3", broken)


def test_remote_answers_pass_errors_through() -> None:
    assert unpack_answer("n2", ["ok", {"id": "a"}]) == {"id": "a"}
    with pytest.raises(RemoteError) as info:
        unpack_answer("n2", ["error", 409, "Conflict", "taken", "taken!"])
    assert (info.value.http_status, info.value.error) == (409, "Conflict")
    assert str(info.value) == "node 'n2': taken"
    assert info.value.details == "taken!"
    with pytest.raises(RemoteError) as info:
        unpack_answer("n2", ["error", 200, "odd", "status", None])
    assert info.value.http_status == 502
    with pytest.raises(RemoteError, match="malformed answer"):
        unpack_answer("n2", "whatever")


def build(factory: NodeFactory, node_id: str, **config: Any) -> Node:
    return factory.build(node_id, config=config)


def test_sealed_bodies_open_only_with_a_cluster_key(caxton_node_factory: NodeFactory) -> None:
    keys = {"security.cluster.gossip_keys": [KEY]}
    sender = PeerTrust(build(caxton_node_factory, "n1", **keys))
    receiver = PeerTrust(build(caxton_node_factory, "n2", **keys))
    assert sender.mode == receiver.mode == "keyring"
    sealed = sender.seal({"x": 1})
    assert receiver.open("deploy", "n1", sealed) == ("n1", {"x": 1})
    assert receiver.open("deploy", "", sealed) == ("n1", {"x": 1})
    with pytest.raises(Forbidden, match="names sender 'n1' but came from 'n3'"):
        receiver.open("deploy", "n3", sealed)
    stranger = PeerTrust(
        build(
            caxton_node_factory,
            "n4",
            **{"security.cluster.gossip_keys": [base64.b64encode(os.urandom(32)).decode()]},
        )
    )
    with pytest.raises(Forbidden, match="not sealed with one of this node's"):
        receiver.open("deploy", "n4", stranger.seal({"x": 1}))
    with pytest.raises(Forbidden, match="without a sealed body"):
        receiver.open("replica", "n1", None)


def test_without_mtls_or_keys_nothing_is_trusted(caxton_node_factory: NodeFactory) -> None:
    open_node = PeerTrust(build(caxton_node_factory, "n1"))
    assert open_node.mode is None
    with pytest.raises(Forbidden, match="authenticates no peer"):
        open_node.open("deploy", "n2", open_node.seal({}))


def test_with_mtls_the_transport_names_the_sender(caxton_node_factory: NodeFactory) -> None:
    mtls = {"security.cluster.mtls.enabled": True}
    trust = PeerTrust(build(caxton_node_factory, "n2", **mtls))
    assert trust.mode == "mtls"
    body = wire.pack(["n1", {"x": 1}])
    assert trust.open("claim", "n1", body) == ("n1", {"x": 1})
    with pytest.raises(Forbidden, match="came from 'an unidentified peer'"):
        trust.open("claim", "", body)


async def test_replicas_keep_their_module_until_the_last_user_goes(tmp_path: Path) -> None:
    store = Store(tmp_path / "local.db")
    await store.open()
    try:
        replica = Replica("id-1", "worker", "n3", 1, SHA, DeploySpec("worker"), ("n1",))
        store.put_replica(replica.record(), b"\0asm module")
        store.put_replica({**replica.record(), "agent_id": "id-2"}, b"\0asm module")
        assert await store.has_module(SHA)
        assert await store.module_count() == 1
        [first, second] = await store.load_replicas()
        assert first["spec"] == replica.spec.to_wire()
        assert (first["holders"], second["agent_id"]) == (["n1"], "id-2")
        store.delete_module(SHA)  # an agent manager releasing the module: replicas hold it
        store.delete_replica("id-1", SHA)
        assert await store.module_count() == 1
        store.delete_replica("id-2", SHA)
        assert await store.module_count() == 0
        assert not await store.has_module(SHA)
        store.put_placement("id-1", "worker", 3)
        assert await store.load_placements() == {"id-1": 3}
        store.delete_placement("id-1")
        assert await store.load_placements() == {}
    finally:
        await store.close()


@pytest.fixture
async def http(caxton_node_factory: NodeFactory) -> AsyncIterator[aiohttp.ClientSession]:
    async with caxton_node_factory.node("solo") as node:
        assert node.api_address is not None
        host, port = node.api_address
        async with aiohttp.ClientSession(f"http://{host}:{port}") as session:
            yield session


async def post(http: aiohttp.ClientSession, **body: Any) -> tuple[int, Any]:
    async with http.post("/api/v1/agents", json={"wasm_module": EMPTY_MODULE, **body}) as r:
        return r.status, await r.json()


async def test_a_standalone_node_places_only_on_itself(http: aiohttp.ClientSession) -> None:
    status, agent = await post(http, name="a", target_node="solo")
    assert (status, agent["node_id"]) == (201, "solo")
    status, agent = await post(http, name="b", placement_strategy="round-robin")
    assert (status, agent["node_id"]) == (201, "solo")
    status, agent = await post(http, name="c", prefer_nodes=["elsewhere"])
    assert (status, agent["node_id"]) == (201, "solo")
    status, error = await post(http, name="d", target_node="elsewhere")
    assert (status, error["error"]) == (400, "Unknown node")
    assert "the cluster's nodes are solo" in error["details"]
    status, error = await post(http, name="e", placement_strategy="no-such-strategy")
    assert status == 400
    assert "no-such-strategy" in error["details"]
