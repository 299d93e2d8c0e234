"""Quorum lease figures: how long a node cut off keeps writing, and what the lease costs.

One command, JSON on stdout (and in ``--out``)::

    python benchmarks/bench_lease.py            # every figure, about two minutes
    python benchmarks/bench_lease.py --quick    # fewer rounds, a smoke test

Five nodes in this process over the real tcp transport (plaintext, a gossip key), their
links cut by :class:`caxton.testing.network.LinkCuts` (what crosses a cut link is lost,
in the direction cut only). Two profiles: the defaults (SWIM's default timings,
``partition.detection_timeout = 5s``) and the fast LAN profile (``gossip_interval =
100ms``, ``probe_interval = 250ms``, ``probe_timeout = 125ms``, ``suspicion_multiplier
= 3``, ``detection_timeout = 1s``).

- ``cut_to_read_only_<profile>_<fault>``: seconds from the cut until the cut-off node
  is read-only (its mode polled every 5 ms, as a write would check it), for ``isolate``,
  ``mute`` (receives, cannot send) and ``deafen`` (sends, cannot receive). The bound is
  ``detection_timeout``; the heartbeats every ``detection_timeout / 4`` put it between
  3/4 of that and all of it.
- ``heartbeats``: in a steady 5-node cluster at the defaults, heartbeats each node sends
  per second, and the bytes of one heartbeat and its answer (control payloads; the
  transport adds its frame header).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from caxton.cluster import wire
from caxton.drivers.partition import PartitionMode
from caxton.node import Node
from caxton.testing import NodeFactory
from caxton.testing.network import LinkCuts
from caxton_transport_tcp.driver import TcpTransport

BASE = {
    "transport.plaintext": True,
    "security.cluster.gossip_keys": [base64.b64encode(os.urandom(32)).decode()],
}
PROFILES: dict[str, dict[str, Any]] = {
    "default": {},
    "fast": {
        "coordination.cluster.gossip_interval": "100ms",
        "coordination.cluster.probe_interval": "250ms",
        "coordination.cluster.probe_timeout": "125ms",
        "coordination.cluster.suspicion_multiplier": 3,
        "partition.detection_timeout": "1s",
    },
}
FAULTS = ("isolate", "mute", "deafen")


def distribution(samples: Sequence[float]) -> dict[str, Any]:
    values = sorted(samples)
    if not values:
        return {"samples": 0}

    def q(p: float) -> float:
        return round(values[min(len(values) - 1, int(p * len(values)))], 3)

    return {"samples": len(values), "p50": q(0.5), "p99": q(0.99), "max": round(values[-1], 3)}


def writable(node: Node) -> bool:
    return node.cluster.partition.mode is PartitionMode.READ_WRITE


async def until(check: Any, timeout: float, step: float = 0.005) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not check():
        if loop.time() - start > timeout:
            raise AssertionError("timed out")
        await asyncio.sleep(step)
    return loop.time() - start


async def cluster(base: Path, profile: dict[str, Any]) -> tuple[NodeFactory, LinkCuts, list[Node]]:
    links = LinkCuts()
    factory = NodeFactory(base, config={**BASE, **profile})
    factory.register_driver("transport", "tcp", links.driver(TcpTransport))
    first = factory.build("n1", bootstrap=True)
    await first.start()
    assert first.cluster_address is not None
    seed = f"127.0.0.1:{first.cluster_address[1]}"
    nodes = [first]
    for i in range(2, 6):
        node = factory.build(f"n{i}", join=[seed])
        await node.start()
        nodes.append(node)
    await until(lambda: all(len(n.cluster.lease.contacts()) == 5 for n in nodes), 60, 0.05)
    return factory, links, nodes


async def cut_to_read_only(base: Path, profile: dict[str, Any], rounds: int) -> dict[str, Any]:
    factory, links, nodes = await cluster(base, profile)
    result: dict[str, Any] = {}
    try:
        for fault in FAULTS:
            samples = []
            for _ in range(rounds):
                victim = nodes[-1]
                await asyncio.sleep(0.3)  # a random-ish phase against the heartbeats
                getattr(links, fault)(victim.node_id)
                samples.append(await until(lambda victim=victim: not writable(victim), 30))
                links.heal()
                await until(
                    lambda: all(len(n.cluster.lease.contacts()) == 5 for n in nodes), 90, 0.05
                )
            result[fault] = distribution(samples)
    finally:
        await factory.stop_all()
    return result


async def heartbeats(base: Path, seconds: float) -> dict[str, Any]:
    factory, _links, nodes = await cluster(base, {})
    try:
        before = [n.cluster.lease.sent for n in nodes]
        await asyncio.sleep(seconds)
        sent = [n.cluster.lease.sent - b for n, b in zip(nodes, before, strict=True)]
    finally:
        await factory.stop_all()
    return {
        "nodes": 5,
        "per_node_per_second": round(sum(sent) / len(sent) / seconds, 2),
        "request_bytes": len(wire.encode_control("lease")),
        "answer_bytes": len(wire.pack("n1")),
    }


async def run(quick: bool) -> dict[str, Any]:
    result: dict[str, Any] = {"python": sys.version.split()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        for name, profile in PROFILES.items():
            figures = await cut_to_read_only(base / name, profile, 2 if quick else 4)
            for fault, figure in figures.items():
                result[f"cut_to_read_only_{name}_{fault}"] = figure
        result["heartbeats"] = await heartbeats(base / "beats", 3.0 if quick else 10.0)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.quick))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
