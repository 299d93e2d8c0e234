"""Output commit on a standalone ``caxton server start`` process: a counter is asked by
eight clients at once, the process is SIGKILLed while they are answered, and after a
restart with the same data the count carries on above every count that was replied.

Before the output commit the write-behind could lose the last few milliseconds of key/value
changes whose replies had already been sent: the count went back below what clients saw.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cluster_support import ApiError, ProcessCluster

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
