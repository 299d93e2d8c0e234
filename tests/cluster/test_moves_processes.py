"""Issue 14's "Done when" run: five ``caxton server`` processes under steady load go
through 20 random live moves, a rebalance after a node joins and a drain-and-leave.

Clients on every node ask two counter agents (their count in their key/value state,
every reply after a state change) and four echo agents, at-least-once, the whole time;
a sampler lists every node's own agents every 100 ms. The checker at the end:

- **0 acknowledged lost**: the counts the counters replied are distinct and each one
  is at most the final count (an acknowledged increment that was lost would have its
  count given again); every echo reply is the echo of its request;
- **no double apply**: a counter's final count is at most the number of requests that
  may have reached it (acknowledged or not): none was counted twice;
- **never two writable copies**: no sample shows one agent running (not draining: a
  copy being moved away is) on two nodes at once;
- **each agent exactly once**: at the end, every agent runs on exactly one node.

Later phases (a rolling restart, a rolling upgrade) are added to :data:`PHASES` by the
rolling-upgrade work; each phase is a function of the :class:`Run`.
"""

from __future__ import annotations

import base64
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster_support import ApiError, NodeProcess, ProcessCluster

COUNTERS = ("counter-0", "counter-1")
ECHOES = ("echo-0", "echo-1", "echo-2", "echo-3")
MOVES = 20
SEED = 14


@dataclass
class Run:
    cluster: ProcessCluster
    nodes: dict[str, NodeProcess]
    rng: random.Random
    #: Counter name -> counts replied (acknowledged), and requests that may have reached it.
    replied: dict[str, list[int]] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)
    echo_mismatches: list[str] = field(default_factory=list)
    echo_ok: int = 0
    #: (time, agent, nodes) whenever a sample showed one agent running on two nodes.
    doubles: list[tuple[float, str, list[str]]] = field(default_factory=list)
    samples: int = 0
    moves: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def live(self) -> list[NodeProcess]:
        return [n for n in self.nodes.values() if n.running]

    def where(self) -> dict[str, str]:
        """Agent name -> the node whose own listing shows it running."""
        found: dict[str, str] = {}
        for node in self.live():
            for agent in _local_agents(node):
                if agent["state"] == "running":
                    found[agent["name"]] = node.node_id
        return found


def _local_agents(node: NodeProcess) -> list[dict[str, Any]]:
    try:
        agents: list[dict[str, Any]] = node.request("GET", "/api/v1/agents", timeout=3.0)
    except (ApiError, OSError):
        return []
    return agents


def _counter_client(run: Run, node: NodeProcess, name: str) -> None:
    while not run.stop.is_set() and node.running:
        with run.lock:
            run.sent[name] = run.sent.get(name, 0) + 1
        try:
            answer = node.ask(name, "tick", wait_ms=5000)
        except (ApiError, OSError):
            time.sleep(0.05)
            continue  # not acknowledged: it may or may not have been counted
        reply = answer.get("reply") or {}
        content = reply.get("content")
        if isinstance(content, dict) and isinstance(content.get("count"), int):
            with run.lock:
                run.replied.setdefault(name, []).append(content["count"])


def _echo_client(run: Run, node: NodeProcess) -> None:
    i = 0
    while not run.stop.is_set() and node.running:
        name = ECHOES[i % len(ECHOES)]
        text = f"{node.node_id}-{i}"
        i += 1
        try:
            answer = node.ask(name, text, wait_ms=5000)
        except (ApiError, OSError):
            time.sleep(0.05)
            continue
        content = (answer.get("reply") or {}).get("content")
        with run.lock:
            if content == text:
                run.echo_ok += 1
            else:
                run.echo_mismatches.append(f"{name} answered {content!r} to {text!r}")


def _sampler(run: Run) -> None:
    while not run.stop.is_set():
        seen: dict[str, list[str]] = {}
        for node in run.live():
            for agent in _local_agents(node):
                if agent["state"] == "running":
                    seen.setdefault(agent["name"], []).append(node.node_id)
        run.samples += 1
        for name, nodes in seen.items():
            if len(nodes) > 1:
                run.doubles.append((time.monotonic(), name, sorted(nodes)))
        run.stop.wait(0.1)


def _agent_id(node: NodeProcess, name: str) -> str:
    agents = node.request("GET", f"/api/v1/agents?scope=cluster&name={name}")
    (agent,) = [a for a in agents if a["name"] == name]
    return str(agent["id"])


# -- the phases --------------------------------------------------------------------------


def random_moves(run: Run) -> None:
    ids: dict[str, str] = {}
    for _ in range(MOVES):
        where = run.where()
        name = run.rng.choice(sorted(where))
        live = [n for n in run.live() if n.node_id != where[name]]
        target = run.rng.choice(live).node_id
        through = run.rng.choice(run.live())  # any node
        if name not in ids:
            ids[name] = _agent_id(through, name)
        moved = through.request(
            "POST", f"/api/v1/agents/{ids[name]}/move", {"to": target}, timeout=60
        )
        assert moved["node_id"] == target, moved
        run.moves.append(f"{name}: {where[name]} -> {target}")


def rebalance_after_a_join(run: Run) -> None:
    newcomer = run.cluster.add("n5")
    newcomer.start(join=[run.nodes["n1"].address])
    run.nodes["n5"] = newcomer
    run.cluster.wait_converged(run.live(), 60)
    threading.Thread(target=_echo_client, args=(run, newcomer), daemon=True).start()
    report = newcomer.request(
        "POST", "/api/v1/cluster/rebalance", {"strategy": "even-distribution"}, timeout=120
    )
    assert report["failed"] == {}, report
    counts = {node_id: 0 for node_id in run.nodes}
    for node_id in run.where().values():
        counts[node_id] += 1
    assert counts["n5"] >= 1, counts
    assert max(counts.values()) - min(counts.values()) <= 1, counts


def drain_and_leave(run: Run) -> None:
    leaver = run.nodes["n2"]
    hosted = [name for name, node_id in run.where().items() if node_id == "n2"]
    left = leaver.request("POST", "/api/v1/cluster/leave", {"drain_timeout_ms": 30_000}, timeout=60)
    assert left["stranded"] == {}, left
    assert sorted(left["moved"]) == sorted(hosted), left
    assert leaver.process is not None
    leaver.process.wait(30)


#: The phases in order; the rolling restart and upgrade are appended here.
PHASES: list[Callable[[Run], None]] = [random_moves, rebalance_after_a_join, drain_and_leave]


def test_moves_rebalance_and_leave_under_load(tmp_path: Path, make_cluster: Any) -> None:
    from caxton.testing.sandbox import build_example_agents

    modules = build_example_agents(tmp_path / "agents")
    cluster = make_cluster(extra={"messaging": {"delivery_guarantee": "at-least-once"}})
    nodes = {n.node_id: n for n in cluster.start(4)}
    run = Run(cluster, nodes, random.Random(SEED))
    n1 = nodes["n1"]
    for i, name in enumerate((*COUNTERS, *ECHOES)):
        wasm = modules["counter" if name in COUNTERS else "echo"]
        body = {
            "name": name,
            "wasm_module": base64.b64encode(wasm).decode(),
            "target_node": f"n{i % 4 + 1}",
        }
        n1.request("POST", "/api/v1/agents", body)
    cluster.wait_until(lambda: len(run.where()) == 6, 30, "every agent running")
    threads = [threading.Thread(target=_sampler, args=(run,), daemon=True)]
    for node in nodes.values():
        threads.append(threading.Thread(target=_echo_client, args=(run, node), daemon=True))
        for name in COUNTERS:
            thread = threading.Thread(target=_counter_client, args=(run, node, name))
            threads.append(thread)
    for thread in threads:
        thread.daemon = True
        thread.start()
    time.sleep(1.0)
    for phase in PHASES:
        phase(run)
    time.sleep(1.0)
    run.stop.set()
    for thread in threads:
        thread.join(15)

    # -- the checker ---------------------------------------------------------------------
    survivor = run.live()[0]
    for name in COUNTERS:
        final = survivor.ask(name, "tick")["reply"]["content"]["count"] - 1
        replied = run.replied.get(name, [])
        assert replied, f"{name} answered nothing"
        assert len(set(replied)) == len(replied), f"{name} gave a count twice: lost or two copies"
        assert max(replied) <= final, f"{name} replied {max(replied)}, but counts {final} now"
        assert final <= run.sent[name], f"{name} counted {final} of {run.sent[name]} sent"
    assert not run.echo_mismatches, run.echo_mismatches[:5]
    assert run.echo_ok > 0
    assert not run.doubles, run.doubles[:5]
    assert run.samples > 50
    where: dict[str, list[str]] = {}
    for node in run.live():
        for agent in _local_agents(node):
            where.setdefault(agent["name"], []).append(f"{node.node_id}:{agent['state']}")
    assert sorted(where) == sorted((*COUNTERS, *ECHOES)), where
    for name, copies in where.items():
        assert len(copies) == 1, (name, copies)
        assert copies[0].endswith(":running"), (name, copies)
    print(
        f"moves: {len(run.moves)}; acknowledged counts: "
        f"{ {n: len(v) for n, v in run.replied.items()} }; echoes: {run.echo_ok}; "
        f"samples: {run.samples}"
    )
