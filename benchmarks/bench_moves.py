"""Live moves: one agent with 1 MB of state moved back and forth, and a rebalance of many
agents across five nodes.

One command, JSON on stdout (and in ``--out``)::

    python benchmarks/bench_moves.py                 # 50 moves, 1,000 agents
    python benchmarks/bench_moves.py --quick         # 10 moves, 100 agents: a smoke run
    python benchmarks/bench_moves.py --only move     # or: rebalance

Real ``caxton server start`` processes on loopback (tcp, plaintext with a gossip key,
``durability = "quorum"``, ``replicas = 2``, at-least-once messaging):

- **move**: three nodes; the counter agent with ``--state-mb`` MB of key/value state (16
  values written through ``PUT /api/v1/agents/{id}/state/{key}``) is moved ``--moves``
  times between the nodes through ``POST /api/v1/agents/{id}/move``. ``move_ms``: the
  move as the client sees it (P50/P99); ``server_ms``: as the source measured it. A client
  asks the counter without pause through another node meanwhile: ``pause_ms`` is, per
  move, the longest gap between two consecutive replies around it (P50/P99, max), and
  the counts replied are checked (``lost``: counts given twice or missing from the final
  count; ``failed``: requests not answered).
- **rebalance**: ``--agents`` echo agents deployed on n1 of a cluster of five, then
  ``POST /api/v1/cluster/rebalance`` (``even-distribution``, ``--max-parallel``) while
  clients ask random echo agents through every node: ``seconds``, the agents moved and
  the requests not answered (``failed``).

Targets (issue 14): move P50 <= 50 ms, pause P99 <= 200 ms on loopback; rebalance: 0
messages lost.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "cluster"))

from bench_cluster import distribution  # noqa: E402
from cluster_support import ApiError, NodeProcess, ProcessCluster  # noqa: E402

CONFIG = {
    "messaging": {"delivery_guarantee": "at-least-once"},
    "runtime": {"max_agents": 5000},
}


def modules(directory: Path) -> dict[str, bytes]:
    from caxton.testing.sandbox import build_example_agents

    return build_example_agents(directory)


def deploy(node: NodeProcess, name: str, wasm: bytes, target: str) -> str:
    body = {"name": name, "wasm_module": base64.b64encode(wasm).decode(), "target_node": target}
    return str(node.request("POST", "/api/v1/agents", body, timeout=60)["id"])


def bench_move(base: Path, wasm: bytes, moves: int, state_mb: float) -> dict[str, Any]:
    cluster = ProcessCluster(base / "move", extra=CONFIG)
    try:
        nodes = cluster.start(3)
        n1, _, n3 = nodes
        agent_id = deploy(n1, "counter", wasm, "n2")
        value = os.urandom(64 * 1024).hex()[: 64 * 1024]  # 64 KiB of text
        keys = max(1, round(state_mb * 1024 * 1024 / len(value)))
        for i in range(keys):
            key = urllib.parse.quote(f"blob-{i}")
            n1.request(
                "PUT", f"/api/v1/agents/{agent_id}/state/{key}", {"value": value}, timeout=30
            )
        replies: list[tuple[float, int]] = []
        failed = [0]
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                try:
                    answer = n1.ask("counter", "tick", wait_ms=5000)
                except (ApiError, OSError):
                    failed[0] += 1
                    continue
                count = ((answer.get("reply") or {}).get("content") or {}).get("count")
                if isinstance(count, int):
                    replies.append((time.perf_counter(), count))

        thread = threading.Thread(target=client, daemon=True)
        thread.start()
        time.sleep(1.0)
        where = "n2"
        client_ms: list[float] = []
        server_ms: list[float] = []
        windows: list[tuple[float, float]] = []
        for i in range(moves):
            target = ("n3", "n2")[i % 2] if where != "n1" else "n2"
            through = nodes[i % 3]
            started = time.perf_counter()
            moved = through.request(
                "POST", f"/api/v1/agents/{agent_id}/move", {"to": target}, timeout=60
            )
            ended = time.perf_counter()
            client_ms.append((ended - started) * 1000)
            server_ms.append(float(moved.get("seconds") or 0) * 1000)
            windows.append((started, ended))
            where = moved["node_id"]
            time.sleep(0.2)
        time.sleep(1.0)
        stop.set()
        thread.join(10)
        final = n3.ask("counter", "tick")["reply"]["content"]["count"] - 1
        pauses = []
        times = [t for t, _ in replies]
        for started, ended in windows:
            around = [t for t in times if started - 0.5 <= t <= ended + 0.5]
            gaps = [b - a for a, b in itertools.pairwise(around)]
            pauses.append(max(gaps, default=ended - started) * 1000)
        counts = [c for _, c in replies]
        lost = len(counts) - len(set(counts)) + sum(1 for c in counts if c > final)
        return {
            "moves": moves,
            "state_bytes": keys * len(value),
            "move_ms": distribution(client_ms),
            "server_ms": distribution(server_ms),
            "pause_ms": distribution(pauses),
            "requests_answered": len(replies),
            "failed": failed[0],
            "lost": lost,
        }
    finally:
        cluster.close()


def bench_rebalance(base: Path, wasm: bytes, agents: int, parallel: int) -> dict[str, Any]:
    cluster = ProcessCluster(base / "rebalance", extra=CONFIG)
    try:
        first = cluster.start(1)[0]
        started = time.perf_counter()
        for i in range(agents):
            deploy(first, f"echo-{i}", wasm, "n1")
        deploy_seconds = time.perf_counter() - started
        others = [cluster.add(f"n{i}") for i in range(2, 6)]
        for node in others:
            node.start(join=[first.address])
        nodes = [first, *others]
        cluster.wait_converged(nodes, 120)
        stop = threading.Event()
        answered = [0]
        failed = [0]

        def client(node: NodeProcess, seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                name = f"echo-{rng.randrange(agents)}"
                try:
                    answer = node.ask(name, name, wait_ms=5000)
                except (ApiError, OSError):
                    failed[0] += 1
                    continue
                if (answer.get("reply") or {}).get("content") == name:
                    answered[0] += 1
                else:
                    failed[0] += 1

        threads = [
            threading.Thread(target=client, args=(n, i), daemon=True) for i, n in enumerate(nodes)
        ]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        began = time.perf_counter()
        report = first.request(
            "POST",
            "/api/v1/cluster/rebalance",
            {"strategy": "even-distribution", "max_parallel": parallel},
            timeout=3600,
        )
        seconds = time.perf_counter() - began
        time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join(10)
        counts = {n.node_id: len(n.request("GET", "/api/v1/agents")) for n in nodes}
        return {
            "agents": agents,
            "deploy_seconds": round(deploy_seconds, 1),
            "seconds": round(seconds, 2),
            "planned": len(report["plan"]),
            "moved": len(report["moved"]),
            "not_moved": len(report["failed"]),
            "per_node_after": counts,
            "requests_answered": answered[0],
            "failed": failed[0],
        }
    finally:
        cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=("move", "rebalance"))
    parser.add_argument("--moves", type=int, default=50)
    parser.add_argument("--state-mb", type=float, default=1.0)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--max-parallel", type=int, default=8)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.moves, args.agents = 10, 100
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        wasm = modules(base / "agents")
        if args.only in (None, "move"):
            results["move"] = bench_move(base, wasm["counter"], args.moves, args.state_mb)
        if args.only in (None, "rebalance"):
            results["rebalance"] = bench_rebalance(
                base, wasm["echo"], args.agents, args.max_parallel
            )
    results["load_average_after"] = os.getloadavg()
    text = json.dumps(results, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
