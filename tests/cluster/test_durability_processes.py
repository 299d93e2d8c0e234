"""Output commit with real ``caxton server start`` processes, SIGKILLed under load.

- Standalone: a counter is asked by eight clients at once, the process is SIGKILLed while
  they are answered, and after a restart with the same data the count carries on above
  every count that was replied. (Before the output commit the write-behind could lose the
  last few milliseconds of changes whose replies had been sent.)
- Three nodes, ``durability = "quorum"``: the counter's node is SIGKILLed while clients
  on another node are answered; after the failover no count was replied twice and the
  count carries on above every count that was replied. (With ``async`` the failover
  restarted from state ~100 ms old: counts were replied twice.)
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cluster_support import ApiError, NodeProcess, ProcessCluster

from caxton.testing.sandbox import build_example_agents

pytestmark = pytest.mark.cluster

MakeCluster = Callable[..., ProcessCluster]
CLIENTS = 8


def test_kill_9_never_loses_a_change_whose_reply_was_seen(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    counter = build_example_agents(tmp_path / "agents")["counter"]
    cluster = make_cluster()
    node = cluster.add("solo")
    node.start()  # no --bootstrap, no --join: a standalone node
    cluster.wait_until(node.ready, 60, "solo ready")
    node.deploy("counter", counter)

    replied: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                answer: Any = node.ask("counter", "tick", wait_ms=2000)
            except (ApiError, OSError):
                return  # the node is gone
            reply = answer.get("reply") or {}
            count = (reply.get("content") or {}).get("count")
            if isinstance(count, int):
                with lock:
                    replied.append(count)

    with ThreadPoolExecutor(CLIENTS) as pool:
        for _ in range(CLIENTS):
            pool.submit(client)
        cluster.wait_until(lambda: len(replied) >= 400, 60, "400 replies")
        node.kill()  # SIGKILL while the clients are being answered
        stop.set()
    seen = max(replied)

    node.start()
    cluster.wait_until(node.ready, 60, "solo ready again")
    after = node.ask("counter", "tick")["reply"]["content"]["count"]
    assert after > seen, f"replied {seen} before the kill, but the count is {after} after it"


def ask_counts(node: NodeProcess, replied: list[int], stop: threading.Event) -> None:
    """Ask the counter through ``node`` until ``stop``; record every count replied."""
    while not stop.is_set():
        try:
            answer: Any = node.ask("counter", "tick", wait_ms=1000)
        except (ApiError, OSError):
            continue  # no answer during the failover: not acknowledged
        reply = answer.get("reply") or {}
        count = (reply.get("content") or {}).get("count") if reply else None
        if isinstance(count, int):
            replied.append(count)


def test_a_failover_under_load_replies_no_count_twice_and_loses_none(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    counter = build_example_agents(tmp_path / "agents")["counter"]
    cluster = make_cluster()
    n1, n2, n3 = cluster.start(3)
    body = {"name": "counter", "target_node": "n3", "wasm_module": base64.b64encode(counter)}
    n1.request("POST", "/api/v1/agents", {**body, "wasm_module": body["wasm_module"].decode()})
    cluster.wait_until(lambda: n1.agents().get("counter") == "n3", 30, "counter on n3")
    cluster.wait_until(
        lambda: any("Agent 'counter' replicated to" in e["text"] for e in events(n3)),
        30,
        "counter replicated",
    )
    replied: list[int] = []
    stop = threading.Event()
    with ThreadPoolExecutor(4) as pool:
        for node in (n1, n2, n1, n2):
            pool.submit(ask_counts, node, replied, stop)
        cluster.wait_until(lambda: len(replied) >= 200, 60, "200 replies")
        n3.kill()  # SIGKILL while the clients are being answered
        before = len(replied)
        cluster.wait_until(lambda: len(replied) >= before + 50, 90, "50 replies after the kill")
        stop.set()
    assert len(replied) == len(set(replied)), "a count was replied twice"
    after = n1.ask("counter", "tick")["reply"]["content"]["count"]
    assert after > max(replied), f"replied {max(replied)}, the count is now {after}"


def events(node: NodeProcess) -> list[dict[str, Any]]:
    try:
        return list(node.request("GET", "/api/v1/cluster/events?limit=1000")["events"])
    except (ApiError, OSError):
        return []
