"""The pieces of partition handling that need no cluster: the queued-writes table of
the store, the ``detect-partition`` report as printed, and the partition routes of a
node that does not cluster. (Clustered nodes, and a real network partition:
tests/cluster/test_partition_queue.py and test_partition_netns.py.)"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner

from caxton.cli.cluster import cluster as cluster_cli
from caxton.cli.cluster import partition_text, status_text
from caxton.cluster.partition import compare_digests
from caxton.messaging import Message, Performative
from caxton.store import Store
from caxton.store.migrations import CLUSTER_MIGRATIONS, CLUSTER_NAMESPACE
from caxton.testing import NodeFactory


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(tmp_path / "state.db")
    store.register_migrations(CLUSTER_NAMESPACE, CLUSTER_MIGRATIONS)
    await store.open()
    yield store
    await store.close()


def message(receiver: str, content: int) -> Message:
    return Message(Performative.INFORM, "sender", receiver, content, conversation_id="c1")


async def test_queued_writes_come_back_in_order_and_survive_a_reopen(
    store: Store, tmp_path: Path
) -> None:
    for i in range(3):
        await store.queue_write(message("a", i), "n1")
    await store.queue_write(message("b", 9), "n2")
    first = message("a", 0)
    await store.queue_write(first, "n1")
    await store.queue_write(first, "n1")  # the same message twice is kept once
    assert await store.queued_write_counts() == {"a": 4, "b": 1}
    await store.close()

    reopened = Store(tmp_path / "state.db")
    reopened.register_migrations(CLUSTER_NAMESPACE, CLUSTER_MIGRATIONS)
    await reopened.open()
    try:
        queued = await reopened.queued_writes()
        assert [(q.node_id, q.receiver, q.message and q.message.content) for q in queued] == [
            ("n1", "a", 0),
            ("n1", "a", 1),
            ("n1", "a", 2),
            ("n2", "b", 9),
            ("n1", "a", 0),
        ]
        assert [q.seq for q in queued] == sorted(q.seq for q in queued)
        assert queued[0].message is not None
        assert queued[0].message.conversation_id == "c1"
        reopened.unqueue_write(queued[0].seq)
        later = await reopened.queued_writes(2, after=queued[1].seq)
        assert [q.message and q.message.content for q in later] == [2, 9]
        assert await reopened.queued_write_counts() == {"a": 3, "b": 1}
        assert (await reopened.schema_versions())[CLUSTER_NAMESPACE] == len(CLUSTER_MIGRATIONS)
    finally:
        await reopened.close()


async def test_an_unreadable_queued_message_comes_back_with_its_problem(store: Store) -> None:
    await store.queue_write(message("a", 1), "n1")
    store.enqueue(
        "INSERT INTO queued_writes (message_id, receiver, node_id, body, queued_at)"
        " VALUES ('bad', 'b', 'n2', x'7b7b', 0)"
    )
    good, bad = await store.queued_writes()
    assert good.message is not None
    assert good.message.content == 1
    assert (bad.receiver, bad.node_id, bad.message) == ("b", "n2", None)
    assert bad.problem  # why it could not be read
    store.unqueue_write(bad.seq)
    assert await store.queued_write_counts() == {"a": 1}


def test_detect_partition_prints_the_sides_majority_first() -> None:
    report = {
        "node_id": "n3",
        "partitioned": True,
        "partitions": [
            {"nodes": ["n1", "n2"], "majority": True, "local": False},
            {"nodes": ["n3"], "majority": False, "local": True},
        ],
        "mode": "read-only",
        "queued_writes": 42,
    }
    assert partition_text(report).splitlines() == [
        "WARNING: Network partition detected",
        "Partition A: [n1, n2] (majority)",
        "Partition B: [n3] (minority)",
        "This node: n3 (READ-ONLY, queued writes: 42)",
    ]
    whole = {"node_id": "n1", "partitioned": False, "partitions": [{"nodes": ["n1", "n2"]}]}
    assert partition_text(whole) == "No network partition detected: 2/2 nodes reachable"


def test_verify_names_who_disagrees_on_members_and_registry_versions() -> None:
    def digest(node_id: str, alive: str, registry: dict[str, list[int]]) -> dict[str, object]:
        members = {n: "alive" if n in alive.split() else "failed" for n in ("n1", "n2", "n3")}
        return {"node_id": node_id, "members": members, "registry": registry}

    agreeing = [
        digest("n1", "n1 n2 n3", {"n1": [7, 3], "n2": [5, 1]}),
        digest("n2", "n1 n2 n3", {"n2": [5, 1], "n1": [7, 3], "n3": [2, 0]}),
        digest("n3", "n1 n2 n3", {"n3": [2, 0], "n1": [7, 3], "n2": [5, 1]}),
    ]
    # n1 holds nothing of n3, which has no agents: that agrees.
    assert compare_digests(agreeing) == {"n1": [], "n2": [], "n3": []}
    behind = [*agreeing[:2], digest("n3", "n2 n3", {"n3": [2, 0], "n1": [7, 2], "n2": [5, 1]})]
    assert compare_digests(behind) == {
        "n1": [],
        "n2": [],
        "n3": [
            "does not see n1 alive",
            "holds version 7.2 of n1's agents, n1 is at 7.3",
        ],
    }


def test_status_shows_queued_writes_in_a_minority_or_when_some_wait() -> None:
    minority = {
        "status": "DEGRADED",
        "partition": "minority",
        "mode": "read-only",
        "nodes_reachable": 1,
        "nodes_known": 3,
        "queued_writes": 42,
    }
    assert status_text(minority).splitlines() == [
        "Status: DEGRADED (minority partition)",
        "Operations: READ-ONLY",
        "Nodes: 1/3 active",
        "Queued writes: 42",
    ]
    healthy = {**minority, "status": "HEALTHY", "mode": "read-write", "queued_writes": 0}
    assert "Queued writes" not in status_text(healthy)
    assert "Queued writes: 3" in status_text({**healthy, "queued_writes": 3})
    pending = {"node_id": "n2", "agents": ["a", "b"], "seconds": 3.25, "waiting": "why"}
    assert status_text({**healthy, "pending_failovers": [pending]}).splitlines()[-1] == (
        "Failover of n2 pending (2 agents, 3.2s): waiting, why"
    )


async def test_a_node_that_does_not_cluster_is_never_partitioned_nor_read_only(
    caxton_node_factory: NodeFactory,
) -> None:
    async with caxton_node_factory.node("solo") as node:
        assert node.api_address is not None
        host, port = node.api_address
        async with aiohttp.ClientSession(f"http://{host}:{port}") as http:
            async with http.get("/api/v1/cluster/partition") as answer:
                assert answer.status == 200
                report = await answer.json()
            assert (report["partitioned"], report["mode"], report["queued_writes"]) == (
                False,
                "read-write",
                0,
            )
            assert report["partitions"] == [{"nodes": ["solo"], "majority": True, "local": True}]
            async with http.get("/api/v1/cluster/status") as answer:
                assert (await answer.json())["queued_writes"] == 0
            deploy = {"name": "x", "wasm_module": base64.b64encode(b"\0asm").decode()}
            async with http.post("/api/v1/agents", json=deploy) as answer:
                assert answer.status != 503  # refused for its module, not a partition
        runner = CliRunner()
        url = ["--api-url", f"http://{host}:{port}"]
        for command, expected in (
            ("verify", "Cluster consistent: members and registry agree"),
            ("verify-auth", "keys and certificates agree"),
            ("detect-partition", "No network partition detected: 1/1 nodes reachable"),
        ):
            result = await asyncio.to_thread(runner.invoke, cluster_cli, [command, *url])
            assert result.exit_code == 0, result.output
            lines = result.output.splitlines()
            assert lines[-1] == expected
        verify = await asyncio.to_thread(runner.invoke, cluster_cli, ["verify", *url])
        header, row = verify.output.splitlines()[:2]
        assert header.split() == ["NODE-ID", "ALIVE", "REGISTRY-VERSION", "AGREES", "PROBLEMS"]
        assert row.split() == ["solo", "1", "-", "yes", "-"]
