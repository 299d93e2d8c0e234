"""Acknowledged node-to-node delivery across real node processes: the node hosting the
receiver is SIGKILLed in the middle of a stream of at-least-once messages, then started
again with its data. Every message the sending node answered 202 must end delivered
(committed to the receiving node's store and handed to the agent) or dead-lettered with
a reason on the sending node: none may vanish."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cluster_support import ApiError, ProcessCluster

pytestmark = pytest.mark.cluster

CONFIG = {
    "messaging": {"delivery_guarantee": "at-least-once", "message_ttl": "30s"},
    # no failover: the killed node comes back with its data and its agent
    "coordination.cluster": {"failover": False},
}


def stream(node: Any, accepted: list[str], stop: threading.Event) -> None:
    """POST informs for echo to ``node`` until ``stop``; record the ids answered 202."""
    i = 0
    while not stop.is_set():
        body = {"performative": "inform", "receiver": "echo", "content": i}
        try:
            answer = node.request("POST", "/api/v1/messages", body, timeout=5.0)
        except (ApiError, OSError):  # 404 while echo's node is down: not accepted
            time.sleep(0.01)
            continue
        accepted.append(answer["message_id"])
        i += 1


def delivered_ids(data_dir: Path) -> set[str]:
    """Messages for echo the node committed and handed to the agent (its outbox)."""
    with sqlite3.connect(data_dir / "local.db") as db:
        rows = db.execute(
            "SELECT message_id FROM outbox WHERE receiver = 'echo' AND acked_at IS NOT NULL"
        ).fetchall()
    return {row[0] for row in rows}


def test_every_202_ends_delivered_or_dead_lettered_when_the_receiver_is_killed(
    make_cluster: Any, echo: bytes
) -> None:
    cluster: ProcessCluster = make_cluster(extra=CONFIG)
    n1, _n2, n3 = cluster.start(3)
    n3.deploy("echo", echo)
    cluster.wait_until(lambda: n1.agents().get("echo") == "n3", 20, "echo known on n1")
    accepted: list[str] = []
    stop = threading.Event()
    client = threading.Thread(target=stream, args=(n1, accepted, stop), daemon=True)
    client.start()
    try:
        cluster.wait_until(lambda: len(accepted) >= 200, 30, "the stream flows")
        n3.kill()  # mid-stream: frames in flight and unacknowledged die with it
        killed_at = len(accepted)
        time.sleep(1.0)
        n3.start(join=[n1.address])
        cluster.wait_until(n3.ready, 30, "n3 back")
        cluster.wait_until(lambda: len(accepted) >= killed_at + 200, 60, "the stream flows on")
    finally:
        stop.set()
        client.join(10)

    def settled() -> bool:
        totals = n1.request("GET", "/api/v1/queues")["totals"]
        return bool(totals["forwarding"] == 0 and totals["persisting"] == 0)

    cluster.wait_until(settled, 60, "n1 has nothing left to forward")
    letters = n1.request("GET", "/api/v1/queues/dead-letters?limit=10000")["dead_letters"]
    dead = {d["message_id"]: d["reason"] for d in letters if d["receiver"] == "echo"}
    assert all(dead.values())  # each with its reason
    assert n3.stop() == 0  # flushes its store
    delivered = delivered_ids(n3.data_dir)
    vanished = [m for m in accepted if m not in delivered and m not in dead]
    assert not vanished, f"{len(vanished)} of {len(accepted)} accepted messages vanished"
    assert len(delivered) > len(accepted) // 2
