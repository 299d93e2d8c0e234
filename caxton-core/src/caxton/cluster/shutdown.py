"""A clean, ordered stop of the whole cluster: ``caxton cluster stop --all``.

The node the operator asks (the *coordinator*) stops every reachable member, then
itself, in two phases of the sealed ``cluster-stop`` control operation:

1. ``prepare``, on every node at once (the coordinator included): the node stops
   failing over (a peer that goes away now is stopping, not failing, and its agents
   must come back on it, not elsewhere), waits up to ``drain`` seconds for its queues to
   empty,
   writes what it hosts to ``DATA_DIR/cluster-stop.json`` (read by ``caxton cluster
   start --verify``) and answers its agents and the messages still queued.
2. ``stop``, on every prepared peer: the node answers, then stops as on SIGTERM (its
   agents get ``agent_shutdown``, its store is flushed, it announces its leave). The
   coordinator waits until each is gone from its membership view, answers the operator
   node by node, and stops last.

A node prepared but never told to stop (the coordinator died in between) takes up
failover again after ``hold`` seconds.

What happens to in-flight messages: those queued on a node are delivered during the
drain; what is still queued when the drain times out, or arrives after it, is kept
in the node's SQLite outbox with ``messaging.delivery_guarantee = "at-least-once"`` and
delivered after the restart (messages to agents on other nodes are sent again until
their TTL), and is lost with ``at-most-once``: the answer counts them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from caxton.errors import CaxtonError, ValidationError

if TYPE_CHECKING:
    from caxton.cluster.service import Cluster
    from caxton.node import Node

__all__ = ["OPS", "RECORD_FILE", "prepare", "read_record", "run", "stop_cluster"]

log = logging.getLogger("caxton.cluster.shutdown")

#: The control op this module answers (sealed, see :mod:`caxton.cluster.trust`).
OPS = frozenset({"cluster-stop"})
#: What a node hosted when ``cluster stop --all`` stopped it, in its data directory.
RECORD_FILE = "cluster-stop.json"
#: Seconds a prepared node waits for ``stop`` before it serves normally again.
HOLD_EXTRA = 60.0
#: Seconds the coordinator waits for each stopped peer to be gone from its view.
GONE_TIMEOUT = 30.0


async def prepare(node: Node, body: Mapping[str, Any], coordinator: str) -> dict[str, Any]:
    """Phase 1 on this node; see the module docstring."""
    drain = _seconds(body.get("drain"), "drain")
    hold = _seconds(body.get("hold", drain + HOLD_EXTRA), "hold")
    cluster: Cluster = node.cluster
    cluster.stopping_until = time.monotonic() + hold  # see Cluster.stopping_all
    router, agents = node.router, node.agents
    remaining = int(await router.drain(drain)) if router is not None and drain > 0 else 0
    hosted = sorted(a.name for a in agents.list()) if agents is not None else []
    members = [m.node_id for m in cluster._peers()]
    record = {
        "node_id": node.node_id,
        "at": time.time(),
        "coordinator": coordinator,
        "members": sorted([node.node_id, *members]),
        "agents": hosted,
        "queued": remaining,
    }
    await asyncio.to_thread(_write_record, node, record)
    durable = getattr(router, "outbox", None) is not None
    return {
        "agents": hosted,
        "queued": remaining,
        "queued_kept": durable,
    }


def _seconds(value: Any, name: str) -> float:
    if value is None:
        return 0.0
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 3600:
        raise ValidationError(f"{name} must be a number of seconds from 0 to 3600")
    return float(value)


def _write_record(node: Node, record: dict[str, Any]) -> None:
    from caxton.backup.archive import private_file

    data_dir = node.data_dir
    partial = data_dir / f".{RECORD_FILE}.{os.getpid()}.partial"
    with private_file(partial) as out:
        out.write(json.dumps(record, indent=2).encode())
    os.replace(partial, data_dir / RECORD_FILE)


def read_record(data_dir: Any) -> dict[str, Any] | None:
    """The record a ``cluster stop --all`` left in ``data_dir`` (None: there is none)."""
    from pathlib import Path

    try:
        record: dict[str, Any] = json.loads((Path(data_dir) / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record


async def run(node: Node, body: Mapping[str, Any], sender: str) -> dict[str, Any]:
    """Answer one ``cluster-stop`` phase asked by ``sender``."""
    phase = body.get("phase")
    if phase == "prepare":
        return await prepare(node, body, sender)
    if phase == "stop":
        cluster = node.cluster
        if not cluster.stopping_all:
            raise ValidationError(
                f"node {node.node_id} was not prepared for a cluster stop (or waited too "
                f"long for it): ask again"
            )
        cluster.stop_node_soon(delay=0.2)  # once this answer is on its way
        return {"stopping": True}
    raise ValidationError(f"unknown cluster-stop phase {phase!r}")


async def stop_cluster(cluster: Cluster, drain: float) -> dict[str, Any]:
    """The coordinator's part: prepare every reachable node, stop the peers and wait
    until each is gone. Returns ``{"coordinator", "nodes", "failed"}``; the caller
    stops this node once its answer is sent."""
    operations = cluster.operations
    targets = operations.reachable()
    body = {"phase": "prepare", "drain": drain, "hold": drain + HOLD_EXTRA}
    prepared = await operations.fan_out("cluster-stop", body, drain + 15.0, targets)
    nodes: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    for node_id, answer in prepared.items():
        if isinstance(answer, CaxtonError):
            failed[node_id] = f"not prepared, left running: {answer}"
        else:
            nodes[node_id] = dict(answer)
    peers = [n for n in nodes if n != cluster.node_id]
    stopped = await operations.fan_out("cluster-stop", {"phase": "stop"}, 10.0, peers)
    for node_id, answer in stopped.items():
        if isinstance(answer, CaxtonError):
            failed[node_id] = f"not stopped: {answer}"
            del nodes[node_id]
    gone = await _wait_gone(cluster, [n for n in peers if n in nodes], GONE_TIMEOUT)
    for node_id in nodes:
        if node_id == cluster.node_id:
            nodes[node_id]["status"] = "stopping"
        elif node_id in gone:
            nodes[node_id]["status"] = "stopped"
        else:
            nodes[node_id]["status"] = "stopping"
            failed[node_id] = f"still a live member {GONE_TIMEOUT:g}s after it was told to stop"
    return {"coordinator": cluster.node_id, "nodes": nodes, "failed": failed}


async def _wait_gone(cluster: Cluster, node_ids: list[str], timeout: float) -> set[str]:
    """Wait until each of ``node_ids`` has left this node's view and its transport no
    longer answers (its process is stopping or stopped)."""
    deadline = time.monotonic() + timeout
    gone: set[str] = set()
    while True:
        for node_id in node_ids:
            if (
                node_id not in gone
                and cluster._live(node_id) is None
                and not await _answers(cluster, node_id)
            ):
                gone.add(node_id)
        if len(gone) == len(node_ids) or time.monotonic() >= deadline:
            return gone
        await asyncio.sleep(0.05)


async def _answers(cluster: Cluster, node_id: str) -> bool:
    """Whether ``node_id``'s transport still answers a ping."""
    try:
        member = cluster._member(node_id)
        await cluster._control(member.address, 0.5, "ping")
    except CaxtonError:
        return False
    return True
