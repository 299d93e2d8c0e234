"""The partition mode enforced: refused writes, queued messages, replay on heal.

Two real nodes in this process (tcp transport on loopback, real SQLite stores). A node
"crashes" by stopping without announcing its leave, so its peer marks it failed and,
alone of two, goes read-only. The process-level test with a real network partition
(network namespaces and nftables) is tests/cluster/test_partition_netns.py.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner

from caxton import hookimpl
from caxton.cli.cluster import cluster as cluster_cli
from caxton.cli.cluster import status_text
from caxton.cluster.partition import QueuedRoute, verify_cluster
from caxton.drivers import PartitionDecision, PartitionMode
from caxton.errors import QueueFull, ReadOnlyMode
from caxton.messaging import Message, Performative
from caxton.node import Node
from caxton.testing import NodeFactory
from caxton.testing.sandbox import build_example_agents
from caxton.transport.keyring import generate_key
from caxton.units import format_address

#: Failures found in about two seconds (tests/cluster/cluster_support.py's FAST).
FAST = {
    "coordination.cluster.gossip_interval": "100ms",
    "coordination.cluster.probe_interval": "250ms",
    "coordination.cluster.probe_timeout": "125ms",
    "coordination.cluster.suspicion_multiplier": 4,
}


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The example agents: ``counter`` counts what it receives (in its KV store) and
    replies the count; ``echo`` replies what it receives."""
    return build_example_agents(tmp_path_factory.mktemp("agents"))


@pytest.fixture
def factory(tmp_path: Path) -> NodeFactory:
    return NodeFactory(
        tmp_path,
        use_entry_points=True,
        config={
            **FAST,
            "transport.plaintext": True,
            "security.cluster.gossip_keys": [generate_key()],
            "partition.max_queued_writes": 5,
        },
    )


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.05)


def seed(node: Node) -> str:
    assert node.cluster_address is not None
    return format_address(node.cluster_address)


async def crash(node: Node) -> None:
    """Stop ``node`` without announcing a leave: its peers must detect the failure."""
    node.cluster.leaving = True
    await node.stop()


class ForcedMode:
    """A partition decision a test sets by hand (None: the policy decides)."""

    def __init__(self) -> None:
        self.decision: PartitionDecision | None = None

    @hookimpl
    def caxton_partition_decision(self, node: Node, view: Any) -> PartitionDecision | None:
        return self.decision


@pytest.fixture
async def lone(factory: NodeFactory) -> AsyncIterator[tuple[Node, ForcedMode]]:
    forced = ForcedMode()
    factory.register(forced)
    async with factory.node("lone", bootstrap=True) as node:
        yield node, forced


def force(node: Node, forced: ForcedMode, mode: PartitionMode, reason: str) -> None:
    forced.decision = PartitionDecision(mode, reason)
    node.cluster._mode_changed()


async def test_read_only_refuses_writes_over_rest_and_keeps_reads(
    lone: tuple[Node, ForcedMode], agents: dict[str, bytes]
) -> None:
    node, forced = lone
    await node.agents.deploy("counter", agents["counter"])
    agent_id = node.agents.get("counter").id
    force(node, forced, PartitionMode.READ_ONLY, "minority partition: 1/3 nodes reachable")
    assert node.api_address is not None
    host, port = node.api_address
    wasm = base64.b64encode(agents["counter"]).decode()
    async with aiohttp.ClientSession(f"http://{host}:{port}") as http:
        async with http.post("/api/v1/agents", json={"name": "x", "wasm_module": wasm}) as answer:
            assert answer.status == 503
            error = await answer.json()
        assert error["error"] == "Read-only (minority partition)"
        assert (
            "deploy agent refused: node lone is read-only in a minority partition"
            in (error["details"])
        )
        assert "minority partition: 1/3 nodes reachable" in error["details"]
        for method, path in (
            ("POST", f"/api/v1/agents/{agent_id}/stop"),
            ("DELETE", f"/api/v1/agents/{agent_id}"),
        ):
            async with http.request(method, path) as answer:
                assert answer.status == 503, path
        remove = {"node": "gone", "force": True}
        async with http.post("/api/v1/cluster/remove", json=remove) as answer:
            assert answer.status == 503
            assert "removing member gone refused" in (await answer.json())["details"]
        async with http.get("/api/v1/agents") as answer:
            assert answer.status == 200
            assert [a["name"] for a in await answer.json()] == ["counter"]
        async with http.get("/api/v1/cluster/status") as answer:
            status = await answer.json()
        assert (status["status"], status["mode"], status["queued_writes"]) == (
            "DEGRADED",
            "read-only",
            0,
        )
        assert "Queued writes: 0" in status_text(status)
    # Messages to agents on this node keep flowing.
    reply = await node.router.request(Message(Performative.REQUEST, "tester", "counter"), 5.0)
    assert reply.content == {"count": 1}
    with pytest.raises(ReadOnlyMode, match="update refused"):
        node.cluster.partition.check_write("update")
    force(node, forced, PartitionMode.READ_WRITE, "quorum")
    node.cluster.partition.check_write("update")


async def test_without_degraded_mode_a_minority_node_serves_no_agent_traffic(
    factory: NodeFactory,
) -> None:
    forced = ForcedMode()
    factory.register(forced)
    async with factory.node(
        "lone", bootstrap=True, config={"partition.degraded_mode": False}
    ) as node:
        assert node.api_address is not None
        host, port = node.api_address
        message = {"performative": "inform", "receiver": "anyone", "content": 1}
        async with aiohttp.ClientSession(f"http://{host}:{port}") as http:
            async with http.get("/api/v1/agents") as answer:
                assert answer.status == 200  # read-write: served
            force(node, forced, PartitionMode.READ_ONLY, "minority partition: 1/3 nodes reachable")
            for method, path, body in (
                ("GET", "/api/v1/agents", None),
                ("POST", "/api/v1/messages", message),
            ):
                async with http.request(method, path, json=body) as answer:
                    assert answer.status == 503, path
                    error = await answer.json()
                assert error["error"] == "Unavailable (minority partition)"
                assert "partition.degraded_mode = false" in error["details"]
            for path in ("/api/v1/cluster/status", "/api/v1/health", "/api/v1/cluster/partition"):
                async with http.get(path) as answer:
                    assert answer.status == 200, path  # what an operator needs to look
            force(node, forced, PartitionMode.READ_WRITE, "quorum")
            async with http.get("/api/v1/agents") as answer:
                assert answer.status == 200


async def test_local_only_refuses_messages_to_other_nodes(lone: tuple[Node, ForcedMode]) -> None:
    node, forced = lone
    force(node, forced, PartitionMode.LOCAL_ONLY, "alone: local agents only")
    with pytest.raises(ReadOnlyMode, match="only agents on this node are served"):
        await node.router.send(Message(Performative.INFORM, "tester", "elsewhere"))


async def test_detect_partition_reports_a_whole_cluster(lone: tuple[Node, ForcedMode]) -> None:
    node, _forced = lone
    assert node.api_address is not None
    host, port = node.api_address
    result = await asyncio.to_thread(
        CliRunner().invoke, cluster_cli, ["detect-partition", "--api-url", f"http://{host}:{port}"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "No network partition detected: 1/1 nodes reachable"


async def counter_count(node: Node) -> int:
    reply = await node.router.request(Message(Performative.REQUEST, "probe", "counter"), 5.0)
    count: int = reply.content["count"]
    return count


async def cut_off(factory: NodeFactory, name: str, wasm: bytes) -> tuple[Node, Node]:
    """n1 hosting agent ``name`` crashes: n2, alone of two, is read-only."""
    n1 = factory.build("n1", bootstrap=True)
    await n1.start()
    n2 = factory.build("n2", join=[seed(n1)])
    await n2.start()
    await n1.agents.deploy(name, wasm)
    await wait_for(lambda: bool(n2.cluster.registry.lookup(name)), f"{name} known on n2")
    await crash(n1)
    await wait_for(lambda: n2.cluster.status()["mode"] == "read-only", "n2 read-only")
    return n1, n2


async def restart_alone(factory: NodeFactory, node: Node) -> Node:
    """Crash ``node`` and start it again with its store, knowing no peer."""
    await crash(node)
    again = factory.build(node.node_id, bootstrap=True)
    await again.start()
    return again


async def test_messages_for_a_failed_node_are_queued_kept_across_a_restart_and_replayed(
    factory: NodeFactory, agents: dict[str, bytes]
) -> None:
    try:
        n1, n2 = await cut_off(factory, "counter", agents["counter"])
        for i in range(5):
            await n2.router.send(Message(Performative.INFORM, "tester", "counter", i))
        await wait_for(lambda: n2.cluster.partition.queued == 5, "5 queued writes")
        with pytest.raises(QueueFull, match=r"partition\.max_queued_writes = 5"):
            await n2.router.send(Message(Performative.INFORM, "tester", "counter", 5))
        status = n2.cluster.status()
        assert (status["status"], status["queued_writes"]) == ("DEGRADED", 5)

        n2 = await restart_alone(factory, n2)  # the queue is in n2's SQLite store
        assert n2.cluster.partition.queued == 5
        n1 = factory.build("n1", join=[seed(n2)])
        await n1.start()
        await wait_for(lambda: n2.cluster.partition.queued == 0, "the queue replayed")
        await wait_for(lambda: n1.agents.get("counter").counters.messages_handled >= 5, "5 in")
        assert await counter_count(n1) == 6  # each queued message exactly once

        def texts() -> list[str]:
            return [e.text for e in n2.cluster.recent_events()]

        # The replay records it once it found the queue empty (a store read later).
        await wait_for(
            lambda: any(t.startswith("Cluster synchronized: 5 queued messages") for t in texts()),
            "the replay's end",
        )
        # n2 knew only itself; with n1 known it is read-only until n1 answers its first
        # heartbeat (milliseconds), so the replay may start as a heal.
        replaying = {"Replaying 5 queued messages", "Partition healed, replaying 5 queued messages"}
        assert replaying & set(texts())
    finally:
        await factory.stop_all()


async def test_the_replay_keeps_the_order_and_later_messages_wait_behind_the_queue(
    factory: NodeFactory, agents: dict[str, bytes]
) -> None:
    try:
        n1, n2 = await cut_off(factory, "echo", agents["echo"])
        for i in range(3):
            await n2.router.send(Message(Performative.INFORM, "tester", "echo", i))
        await wait_for(lambda: n2.cluster.partition.queued == 3, "3 queued writes")
        # Read-write again, but with no peer to replay to: what is sent to the echo
        # agent now must not overtake the queue.
        n2 = await restart_alone(factory, n2)
        assert n2.cluster.status()["mode"] == "read-write"
        replies: list[Any] = []
        n2.router.register("tester", lambda reply: replies.append(reply.content))
        for i in range(3, 5):
            await n2.router.send(Message(Performative.INFORM, "tester", "echo", i))
        await wait_for(lambda: n2.cluster.partition.queued == 5, "5 queued writes")
        n1 = factory.build("n1", join=[seed(n2)])
        await n1.start()
        await wait_for(lambda: len(replies) == 5, "5 echoes")
        assert replies == [0, 1, 2, 3, 4]
        assert n2.cluster.partition.queued == 0
        # A route to the queue taken before the heal, used after the replay emptied it:
        # the message goes straight on rather than behind messages sent later.
        late = QueuedRoute(n2.cluster.partition, "n1")
        await late.forward(Message(Performative.INFORM, "tester", "echo", 5))
        assert n2.cluster.partition.queued == 0
        await wait_for(lambda: len(replies) == 6, "the sixth echo")
        for _attempt in range(50):  # the registries converge by gossip
            report = await verify_cluster(n2.cluster)
            if report["consistent"]:
                break
            await asyncio.sleep(0.1)
        assert report["consistent"], report
        assert [(n["node_id"], n["members_alive"]) for n in report["nodes"]] == [
            ("n1", 2),
            ("n2", 2),
        ]
    finally:
        await factory.stop_all()


async def test_a_message_whose_forwarding_fails_in_read_only_mode_is_queued(
    factory: NodeFactory, agents: dict[str, bytes]
) -> None:
    forced = ForcedMode()
    n1 = factory.build("n1", bootstrap=True)
    await n1.start()
    n2 = factory.build("n2", join=[seed(n1)], plugins=[forced])
    await n2.start()
    try:
        await n1.agents.deploy("counter", agents["counter"])
        await wait_for(lambda: bool(n2.cluster.registry.lookup("counter")), "counter known on n2")
        force(n2, forced, PartitionMode.READ_ONLY, "told so")
        await crash(n1)  # n2 still believes n1 alive: the registry routes there
        assert n2.cluster._live("n1") is not None
        await n2.router.send(Message(Performative.INFORM, "tester", "counter", 1))
        await wait_for(lambda: n2.cluster.partition.queued == 1, "the failed forward queued")
    finally:
        await factory.stop_all()


async def test_a_receiver_found_nowhere_holds_back_only_its_own_queued_messages(
    factory: NodeFactory, agents: dict[str, bytes]
) -> None:
    """The long fault campaigns ended with thousands of messages still queued: replies
    queued for request clients gone meanwhile each waited the whole patience (30 s)
    before the next queued message was tried, so nothing behind them was replayed."""
    try:
        n1, n2 = await cut_off(factory, "counter", agents["counter"])
        guard = n2.cluster.partition
        for i in range(3):  # replies to a client of n1 that is gone when the cut heals
            await guard.queue(Message(Performative.INFORM, "counter", f"client-gone-{i}", i), "n1")
        for i in range(2):
            await n2.router.send(Message(Performative.INFORM, "tester", "counter", i))
        await wait_for(lambda: guard.queued == 5, "5 queued writes")
        n2 = await restart_alone(factory, n2)
        n1 = factory.build("n1", join=[seed(n2)])
        await n1.start()
        await wait_for(lambda: "counter" in n1.agents, "the counter back on n1")
        # Well within the patience one missing receiver gets: the counter had both.
        await wait_for(
            lambda: n1.agents.get("counter").counters.messages_handled >= 2,
            "the counter's 2 queued messages",
            timeout=10.0,
        )
        assert set(n2.cluster.partition.waiting) == {f"client-gone-{i}" for i in range(3)}
    finally:
        await factory.stop_all()
