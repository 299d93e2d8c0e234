"""The diagnostic endpoints and commands on one node, each read from what the node really
keeps (real agents in wasmtime, the real router and store). The cluster's side, on three
node processes: tests/cluster/test_diagnostics_processes.py."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import math
import tarfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner, Result

from caxton.cli.main import make_cli
from caxton.diagnostics.reports import trace, verify_deep
from caxton.messaging import Message, Performative
from caxton.node import Node
from caxton.plugins import PluginHost
from caxton.testing import NodeFactory

GOSSIP_KEY = base64.b64encode(b"k" * 32).decode()
JWT_SECRET = "jwt-secret-that-must-never-leak-0123456789"


@pytest.fixture
async def node(caxton_node_factory: NodeFactory) -> AsyncIterator[Node]:
    config = {"security.cluster.gossip_keys": [GOSSIP_KEY], "security.jwt_secret": JWT_SECRET}
    async with caxton_node_factory.node("solo", config=config) as node:
        yield node


async def get(http: aiohttp.ClientSession, path: str, status: int = 200) -> Any:
    async with http.get(path) as response:
        assert response.status == status, await response.text()
        return await response.json()


async def ask(node: Node, receiver: str, content: Any, conversation_id: str | None = None) -> Any:
    request = Message(
        Performative.REQUEST, "client", receiver, content, conversation_id=conversation_id
    )
    return await node.router.request(request, timeout=10)


async def caxton(node: Node, *args: str) -> Result:
    """``caxton ARGS --api-url`` this node, run in a thread so the node keeps serving."""
    assert node.api_address is not None
    url = f"http://{node.api_address[0]}:{node.api_address[1]}"
    runner = CliRunner()
    return await asyncio.to_thread(
        runner.invoke, make_cli(PluginHost()), [*args, "--api-url", url], obj=PluginHost()
    )


async def test_agents_slow_lists_the_agents_over_the_threshold_slowest_first(
    node: Node, http: aiohttp.ClientSession, example_agents: dict[str, bytes]
) -> None:
    await node.agents.deploy("echo", example_agents["echo"])
    await node.agents.deploy("flood", example_agents["log_flood"])  # 5,000 log calls each
    node.router.register("observer", lambda message: None)
    for i in range(5):
        await ask(node, "echo", i)
        await node.router.send(Message(Performative.INFORM, "observer", "flood", i))
    flood_agent = node.agents.get("flood")
    for _ in range(200):
        if flood_agent.counters.messages_handled == 5:
            break
        await asyncio.sleep(0.05)
    every = await get(http, "/api/v1/diagnostics/agents?threshold_ms=0")
    assert [a["agent"] for a in every["agents"]] == ["flood", "echo"]
    flood, echo = every["agents"]
    assert flood["p99_ms"] > echo["p99_ms"] > 0
    assert (flood["messages"], flood["samples"], flood["node_id"]) == (5, 5, "solo")
    above = math.ceil(flood["max_ms"]) + 1
    assert (await get(http, f"/api/v1/diagnostics/agents?threshold_ms={above}"))["agents"] == []
    await get(http, "/api/v1/diagnostics/agents?threshold_ms=-1", 400)
    await get(http, "/api/v1/diagnostics/agents?node=elsewhere", 404)

    result = await caxton(node, "agents", "slow", "--threshold", "0ms")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].split() == [
        "AGENT-ID", "NODE", "AVG-LATENCY", "P99-LATENCY", "MESSAGES"
    ]  # fmt: skip
    assert result.output.splitlines()[1].startswith("flood")


async def test_memory_stats_and_gc(
    node: Node, http: aiohttp.ClientSession, example_agents: dict[str, bytes]
) -> None:
    await node.agents.deploy("counter", example_agents["counter"])
    await ask(node, "counter", "tick")
    report = (await get(http, "/api/v1/diagnostics/memory"))["nodes"][0]
    assert report["node_id"] == "solo"
    assert 0 < report["used_bytes"] <= report["limit_bytes"]
    (counter,) = report["per_agent"]
    assert counter["agent"] == "counter"
    assert counter["memory_bytes"] == node.agents.memory_bytes("counter") > 0
    assert counter["state_bytes"] > 0  # its count
    assert counter["memory_limit_bytes"] == node.agents.get("counter").limits.max_memory_bytes
    async with http.post("/api/v1/diagnostics/memory/gc", json={"aggressive": True}) as response:
        assert response.status == 200
        (gc,) = (await response.json())["nodes"]
    assert gc["aggressive"] is True
    assert any("SQLite" in action for action in gc["actions"])
    assert gc["freed_bytes"] == max(0, gc["used_bytes_before"] - gc["used_bytes_after"])
    async with http.post("/api/v1/diagnostics/memory/gc", json={"aggressive": 1}) as response:
        assert response.status == 400

    result = await caxton(node, "memory", "stats", "--agents")
    assert result.exit_code == 0, result.output
    assert "counter" in result.output
    assert result.output.startswith("NODE")


async def test_trace_shows_a_conversations_messages_in_order(
    node: Node, http: aiohttp.ClientSession, example_agents: dict[str, bytes]
) -> None:
    await node.agents.deploy("echo", example_agents["echo"])
    reply = await ask(node, "echo", "hello", conversation_id="conv-1")
    traced = await get(http, "/api/v1/diagnostics/conversations/conv-1")
    assert traced["found"] is True
    assert traced["nodes"] == ["solo"]
    steps = [(m["performative"], m["sender"], m["receiver"]) for m in traced["messages"]]
    assert steps == [("request", "client", "echo"), ("inform", "echo", "client")]
    assert traced["messages"][1]["message_id"] == reply.message_id
    assert 0 == traced["messages"][0]["offset_ms"] <= traced["messages"][1]["offset_ms"]
    unknown = await get(http, "/api/v1/diagnostics/conversations/nobody")
    assert (unknown["found"], unknown["messages"]) == (False, [])
    await get(http, f"/api/v1/diagnostics/conversations/{'x' * 256}", 400)

    result = await caxton(node, "trace", "--conversation-id", "conv-1")
    assert result.exit_code == 0, result.output
    assert "2 messages on solo" in result.output
    result = await caxton(node, "trace", "--conversation-id", "nobody")
    assert result.exit_code == 1
    assert "no node knows conversation nobody" in result.output
    result = await caxton(node, "trace")
    assert result.exit_code == 2  # one of --conversation-id and --error-cascade


async def test_error_cascade_starts_with_the_first_crash(
    node: Node, http: aiohttp.ClientSession, example_agents: dict[str, bytes]
) -> None:
    cascade = await get(http, "/api/v1/diagnostics/errors?last=60")
    assert (cascade["root"], cascade["events"]) == (None, [])
    await node.agents.deploy("trap", example_agents["trap"])
    answer = await ask(node, "trap", "boom", conversation_id="c-trap")
    assert answer.performative is Performative.FAILURE
    cascade = await get(http, "/api/v1/diagnostics/errors?last=60")
    assert cascade["root"]["kind"] == "crash"
    assert cascade["root"]["agent"] == "trap"
    assert cascade["by_kind"]["crash"] == 1
    assert cascade["by_kind"]["failure"] == 1
    assert [(s["agent"], s["first"]) for s in cascade["cascade"]] == [("trap", "crash")]
    assert cascade["cascade"][0]["errors"] == 2
    await get(http, "/api/v1/diagnostics/errors?last=0", 400)

    result = await caxton(node, "trace", "--error-cascade", "--last", "1m")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Root: ")
    assert "trap: crash:" in result.output


async def test_analyze_messages_finds_a_pattern_in_the_messages_and_errors(
    node: Node, http: aiohttp.ClientSession, example_agents: dict[str, bytes]
) -> None:
    await node.agents.deploy("echo", example_agents["echo"])
    await node.agents.deploy("trap", example_agents["trap"])
    await ask(node, "echo", "hello", conversation_id="c-echo")
    assert (await ask(node, "trap", "boom", conversation_id="c-trap")).performative is (
        Performative.FAILURE
    )
    path = "/api/v1/diagnostics/messages"
    found = await get(http, f"{path}?pattern=failure|crash&last=60")
    # trap's failure answer was routed (a message and a failure event) and it crashed;
    # echo's request and inform match nothing.
    assert found["by_kind"] == {"message": 1, "failure": 1, "crash": 1}, found
    assert found["by_agent"] == {"trap": 2, "client": 1}
    assert found["scanned"] >= 5  # echo's two messages, trap's two, the events
    assert [m["at"] for m in found["matches"]] == sorted(m["at"] for m in found["matches"])
    echo = await get(http, f"{path}?pattern=-%3E%20echo%20&last=60")
    assert [m["text"] for m in echo["matches"]] == ["request client -> echo conversation c-echo"]
    assert (await get(http, f"{path}?pattern=nothing-like-this"))["matched"] == 0
    # a{9999999999}: the re module raises OverflowError, not re.error (was a 500)
    for bad in (
        "pattern=(",
        "pattern=",
        "last=60",
        f"pattern={'x' * 201}",
        "pattern=a{9999999999}",
    ):
        error = await get(http, f"{path}?{bad}", 400)
        assert error["error"], bad

    result = await caxton(node, "analyze", "messages", "--pattern", "crash", "--last", "1h")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("1 of ")
    assert "By agent: trap 1" in result.output
    result = await caxton(node, "analyze", "messages", "--pattern", "(")
    assert result.exit_code == 1
    assert "not a regular expression" in result.output
    assert "Traceback" not in result.output


async def test_a_profile_runs_in_the_background_one_at_a_time(
    node: Node, http: aiohttp.ClientSession, example_agents: dict[str, bytes]
) -> None:
    await node.agents.deploy("echo", example_agents["echo"])

    async def traffic() -> None:
        for i in range(40):
            await ask(node, "echo", i)
            await asyncio.sleep(0.01)

    async with http.post("/api/v1/diagnostics/profile", json={"seconds": 0.6}) as response:
        assert response.status == 202
        started = await response.json()
    async with http.post("/api/v1/diagnostics/profile", json={"seconds": 1}) as response:
        assert response.status == 409
    await traffic()
    path = f"/api/v1/diagnostics/profile/{started['profile_id']}"
    for _ in range(100):
        result = await get(http, path)
        if result["status"] != "running":
            break
        await asyncio.sleep(0.1)
    assert result["status"] == "done"
    (report,) = result["nodes"]
    assert report["samples"] > 10
    assert report["top"]
    assert sum(report["stacks"].values()) == report["samples"]
    (echo,) = report["agents"]
    assert echo["agent"] == "echo"
    assert echo["messages"] > 0
    assert echo["fuel_used"] > 0
    await get(http, f"/api/v1/diagnostics/profile/{uuid.uuid4()}", 404)
    await get(http, "/api/v1/diagnostics/profile/not-an-id", 400)
    for bad in ({"seconds": 0}, {"seconds": 301}, {"node": "elsewhere"}, {"agent": "nobody"}):
        async with http.post("/api/v1/diagnostics/profile", json=bad) as response:
            assert response.status in (400, 404), bad


async def test_the_debug_dump_holds_no_secret(
    node: Node, http: aiohttp.ClientSession, example_agents: dict[str, bytes], tmp_path: Path
) -> None:
    await node.agents.deploy("echo", example_agents["echo"])
    await ask(node, "echo", "hello")
    # A careless plugin logs a secret: the dump still must not carry it.
    logging.getLogger("caxton.careless").warning("connecting with %s", JWT_SECRET)
    async with http.get("/api/v1/diagnostics/dump") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/gzip"
        data = await response.read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        files = {
            member.name: tar.extractfile(member).read().decode()  # type: ignore[union-attr]
            for member in tar.getmembers()
        }
    assert set(files) == {
        "caxton-debug/manifest.json",
        *(
            f"caxton-debug/solo/{name}"
            for name in ("config.json", "status.json", "metrics.txt", "logs.json", "errors.json")
        ),
    }
    for name, text in files.items():
        assert JWT_SECRET not in text, name
        assert GOSSIP_KEY not in text, name
    config = json.loads(files["caxton-debug/solo/config.json"])["config"]
    assert config["security"]["jwt_secret"] == "********"
    assert config["security"]["cluster"]["gossip_keys"] == "********"
    logs = json.loads(files["caxton-debug/solo/logs.json"])
    assert any("connecting with ********" in line["message"] for line in logs["node"])
    status = json.loads(files["caxton-debug/solo/status.json"])
    assert [a["name"] for a in status["agents"]] == ["echo"]
    assert "caxton_node_info" in files["caxton-debug/solo/metrics.txt"]

    target = tmp_path / "dump.tar.gz"
    result = await caxton(node, "debug", "dump", "--output", str(target))
    assert result.exit_code == 0, result.output
    with tarfile.open(target) as tar:
        assert "caxton-debug/solo/config.json" in tar.getnames()


async def test_config_diff_against_the_defaults_and_a_file(node: Node, tmp_path: Path) -> None:
    result = await caxton(node, "config", "diff", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["against"] == "defaults"
    changed = {d["key"]: d for d in report["differences"]}
    assert changed["node.id"]["running"] == "solo"
    assert changed["security.jwt_secret"]["running"] == "********"
    assert JWT_SECRET not in result.output

    baseline = tmp_path / "baseline.toml"
    baseline.write_text(
        f'[node]\nid = "solo"\ndata_dir = "{node.config["node"]["data_dir"]}"\n'
        "[messaging]\nqueue_size = 5\n"
    )
    result = await caxton(node, "config", "diff", "--baseline", str(baseline))
    assert result.exit_code == 1, result.output  # drift
    assert "messaging.queue_size" in result.output
    result = await caxton(node, "config", "diff", "--other-node", "elsewhere")
    assert result.exit_code == 3
    assert "elsewhere" in result.output


async def test_cluster_reports_of_a_node_that_does_not_cluster(
    node: Node, http: aiohttp.ClientSession
) -> None:
    performance = await get(http, "/api/v1/diagnostics/performance")
    rows = {row["metric"]: row for row in performance["targets"]}
    assert rows["Message routing P99"]["status"] in ("pass", "fail")  # the probe measured
    assert rows["Message routing P99"]["actual_ms"] > 0
    assert rows["Gossip convergence"]["status"] == "no-data"
    assert performance["throughput_per_second"] > 0
    analysis = await get(http, "/api/v1/diagnostics/analyze")
    assert analysis["agents_per_node"] == {"solo": 0}
    gossip = await get(http, "/api/v1/diagnostics/gossip")
    assert gossip["nodes"][0]["clustered"] is False
    deep = await get(http, "/api/v1/cluster/verify?deep=true")
    assert deep["consistent"] is True
    assert deep["nodes"][0]["integrity"] == "ok"
    await get(http, "/api/v1/cluster/verify?node=elsewhere", 404)


def test_trace_merges_the_nodes_records_in_time_order() -> None:
    def step(at: float, node_id: str, performative: str) -> dict[str, Any]:
        return {"at": at, "node_id": node_id, "performative": performative}

    merged = trace(
        {
            "nodes": [
                {"node_id": "n1", "known": True, "messages": [step(10.0, "n1", "request"),
                                                              step(10.004, "n1", "inform")]},
                {"node_id": "n2", "known": True, "messages": [step(10.001, "n2", "request"),
                                                              step(10.003, "n2", "inform")]},
                {"node_id": "n3", "known": False, "messages": []},
            ],
            "unreachable": [],
        },
        "c",
    )  # fmt: skip
    assert [(m["node_id"], m["performative"]) for m in merged["messages"]] == [
        ("n1", "request"), ("n2", "request"), ("n2", "inform"), ("n1", "inform")
    ]  # fmt: skip
    assert [m["offset_ms"] for m in merged["messages"]] == [0.0, 1.0, 3.0, 4.0]
    assert merged["nodes"] == ["n1", "n2"]
    assert merged["duration_ms"] == 4.0


def test_verify_deep_finds_missing_stale_and_corrupt_holdings() -> None:
    def hosted(name: str, generation: int, holders: list[str]) -> dict[str, Any]:
        return {"name": name, "generation": generation, "module_sha256": "m", "holders": holders}

    def replica(name: str, owner: str, generation: int) -> dict[str, Any]:
        return {"name": name, "owner": owner, "generation": generation, "module_sha256": "m"}

    registry = {"n1": {"a": ["id-a", "running"]}, "n2": {"b": ["id-b", "running"]}}
    gathered = {
        "nodes": [
            {"node_id": "n1", "registry": registry,
             "hosted": {"id-a": hosted("a", 2, ["n2", "n3"])},
             "replicas": {"id-b": replica("b", "n2", 1)}, "integrity": []},
            {"node_id": "n2", "registry": registry, "hosted": {"id-b": hosted("b", 1, ["n1"])},
             "replicas": {"id-a": replica("a", "n1", 1)}, "integrity": []},
            {"node_id": "n3", "registry": {"n1": registry["n1"]}, "hosted": {},
             "replicas": {}, "integrity": ["*** in database main ***"]},
        ],
        "unreachable": [],
    }  # fmt: skip
    report = verify_deep(gathered)
    problems = {n["node_id"]: n["problems"] for n in report["nodes"]}
    assert problems["n1"] == []
    assert problems["n2"] == ["replica of a at generation 1, n1 runs generation 2"]
    assert problems["n3"] == [
        "state store corrupt: *** in database main ***",
        "registry lacks n2's b",
        "holds no replica of a (n1)",
    ]
    assert report["replicas_checked"] == 3
    assert report["consistent"] is False
    assert [n["node_id"] for n in verify_deep(gathered, "n2")["nodes"]] == ["n2"]
