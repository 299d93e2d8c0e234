"""Cluster figures from real ``caxton server start`` processes on loopback.

One command, JSON on stdout (and in ``--out``)::

    python benchmarks/bench_cluster.py                  # every figure, a few minutes
    python benchmarks/bench_cluster.py --quick          # fewer rounds, a smoke test
    python benchmarks/bench_cluster.py --only routing --transport tcp,quic

Nodes run in plaintext with a gossip key (the tcp transport unless ``--transport``
says otherwise), each in its own process, started by
``tests/cluster/cluster_support.py``. Event times come from the nodes' own event logs
(``GET /api/v1/cluster/events``, wall clock of the one host), so they do not include
the polling of this script.

Figures (targets from the cluster issue):

- ``join``: 5 processes; n1 bootstraps, n2-n5 join at once; seconds from the moment
  the last node was first known by anyone until every view holds every node
  (target <= 1 s).
- ``detection_default`` / ``detection_fast``: a SIGKILLed member of 5, seconds until
  every survivor marks it failed, with the default timings (target P99 <= 6.5 s) and
  the fast LAN profile (``gossip_interval = 100ms``, ``probe_interval = 250ms``,
  ``probe_timeout = 125ms``, ``suspicion_multiplier = 3``; target ~2 s). Each round
  starts a fresh cluster and waits 2 s before the kill.
- ``registry``: 5 processes; agents deployed one after another on rotating nodes;
  seconds from sending the deploy request until each other node records the agent
  (target P99 <= 1 s; includes the deploy itself).
- ``routing_<transport>``: this script runs a node itself, joined to one node process
  that hosts the echo agent: request/reply latency of ``router.request`` to the remote
  agent (target P50 <= 5 ms, P99 <= 50 ms), and throughput of pipelined messages to it
  (each answered by the agent: two node-to-node frames per message); both nodes
  ``--guarantee at-most-once`` (the default) or ``at-least-once`` (persisted, and
  acknowledged node to node), or both.
- ``bandwidth``: gossip bytes sent per node per second in a steady 5-node cluster
  (membership's own counters; the registry sends nothing when nothing changes).
- ``failover_default`` / ``failover_fast``: 3 processes; the echo agent placed on n3
  (``target_node``) and replicated; n3 SIGKILLed (the fast profile also sets
  ``partition.detection_timeout = 1s``: the failover waits for n3's quorum lease to
  lapse, ``detection_timeout + lease_drift_margin`` after the last round trip); seconds
  until a request sent by name
  through n1's REST API is answered again by the agent restarted on a survivor
  (``kill_to_answer_s``), and from the survivors' "failed" event to the taker's
  "migrated" event (``failed_to_running_s``). Each round starts a fresh cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "cluster"))

from cluster_support import ApiError, NodeProcess, ProcessCluster, echo_wasm  # noqa: E402

DEFAULTS: dict[str, Any] = {}
FAST_LAN = {
    "gossip_interval": "100ms",
    "probe_interval": "250ms",
    "probe_timeout": "125ms",
    "suspicion_multiplier": 3,
}
#: The quorum lease of the fast LAN profile (a failover waits detection_timeout + a
#: tenth of it after the last round trip with the failed node).
FAST_LEASE = {"detection_timeout": "1s"}


def distribution(samples: Sequence[float]) -> dict[str, Any]:
    values = sorted(samples)
    if not values:
        return {"samples": 0}

    def q(p: float) -> float:
        return round(values[min(len(values) - 1, int(p * len(values)))], 4)

    return {
        "samples": len(values),
        "p50": q(0.50),
        "p90": q(0.90),
        "p99": q(0.99),
        "max": round(values[-1], 4),
        "mean": round(sum(values) / len(values), 4),
    }


def events(node: NodeProcess) -> list[dict[str, Any]]:
    data = node.request("GET", "/api/v1/cluster/events?limit=1000")
    return list(data["events"])


def event_time(node: NodeProcess, kind: str, about: str, after: float = 0.0) -> float | None:
    times = [
        e["at"]
        for e in events(node)
        if e["kind"] == kind and e["node_id"] == about and e["at"] >= after
    ]
    return min(times) if times else None


# -------------------------------------------------------------------------
# join convergence
# -------------------------------------------------------------------------


def join_round(base: Path, transport: str) -> float:
    cluster = ProcessCluster(base, transport=transport, cluster=DEFAULTS)
    try:
        nodes = [cluster.add(f"n{i}") for i in range(1, 6)]
        first, rest = nodes[0], nodes[1:]
        first.start(bootstrap=True)
        cluster.wait_until(first.ready, 60, "n1 ready")
        for node in rest:
            node.start(join=[first.address])
        cluster.wait_converged(nodes, 60)
        # joined[viewer][member]: when the viewer learnt of the member
        joined = {
            viewer.node_id: {e["node_id"]: e["at"] for e in events(viewer) if e["kind"] == "joined"}
            for viewer in nodes
        }
        firsts = {
            member.node_id: min(
                joined[v][member.node_id] for v in joined if member.node_id in joined[v]
            )
            for member in rest
        }
        last_join = max(firsts.values())
        complete = max(t for view in joined.values() for t in view.values())
        return complete - last_join
    finally:
        cluster.close()


def join(base: Path, transport: str, rounds: int) -> dict[str, Any]:
    samples = [join_round(base / f"join{i}", transport) for i in range(rounds)]
    return {"target_s": 1.0, "nodes": 5, "seconds": distribution(samples)}


# -------------------------------------------------------------------------
# failure detection
# -------------------------------------------------------------------------


def detection_round(
    base: Path, transport: str, timings: dict[str, Any], victim_index: int
) -> list[float]:
    """A fresh 5-node cluster; SIGKILL one member; seconds until each survivor marks it
    failed."""
    cluster = ProcessCluster(base, transport=transport, cluster=timings)
    try:
        nodes = cluster.start(5)
        victim = nodes[victim_index]
        survivors = [n for n in nodes if n is not victim]
        time.sleep(2.0)  # a steady cluster: every member probed at least once
        killed_at = time.time()
        victim.kill()

        def marked() -> bool:
            return all(s.members().get(victim.node_id) == "failed" for s in survivors)

        cluster.wait_until(marked, 60, f"{victim.node_id} failed everywhere", interval=0.1)
        times = [event_time(s, "failed", victim.node_id, killed_at) for s in survivors]
        return [t - killed_at for t in times if t is not None]
    finally:
        cluster.close()


def detection(base: Path, transport: str, timings: dict[str, Any], rounds: int) -> dict[str, Any]:
    everyone: list[float] = []
    each: list[float] = []
    for i in range(rounds):
        seconds = detection_round(base / f"round{i}", transport, timings, 1 + i % 4)
        each += seconds
        everyone.append(max(seconds))
    return {
        "settings": timings or "defaults",
        "nodes": 5,
        "all_survivors_s": distribution(everyone),
        "each_survivor_s": distribution(each),
    }


# -------------------------------------------------------------------------
# registry propagation
# -------------------------------------------------------------------------


def registry(base: Path, transport: str, agents: int) -> dict[str, Any]:
    cluster = ProcessCluster(base, transport=transport, cluster=DEFAULTS)
    wasm = echo_wasm()
    samples: list[float] = []
    try:
        nodes = cluster.start(5)
        nodes[0].deploy("warm-up", wasm)  # the first deploy compiles the module
        sent: dict[str, tuple[float, str]] = {}
        for i in range(agents):
            owner = nodes[i % 5]
            name = f"agent-{i}"
            sent[name] = (time.time(), owner.node_id)
            owner.deploy(name, wasm)
        time.sleep(1.0)
        for viewer in nodes:
            registered = {
                e["text"].split("'")[1]: e["at"]
                for e in events(viewer)
                if e["kind"] == "agent-registered"
            }
            for name, (at, owner_id) in sent.items():
                if owner_id == viewer.node_id:
                    continue
                seen = registered.get(name)
                samples.append(float("inf") if seen is None else seen - at)
    finally:
        cluster.close()
    return {"target_p99_s": 1.0, "nodes": 5, "agents": agents, "seconds": distribution(samples)}


# -------------------------------------------------------------------------
# routing between two node processes
# -------------------------------------------------------------------------


async def _routing(
    remote: NodeProcess, base: Path, transport: str, seconds: float, guarantee: str
) -> dict[str, Any]:
    from caxton.messaging import Message, Performative
    from caxton.testing import NodeFactory

    factory = NodeFactory(
        base / "local",
        use_entry_points=True,
        config={
            "transport.plaintext": True,
            "security.cluster.gossip_keys": [remote.cluster.gossip_key],
            "plugins.transport": transport,
            "messaging.delivery_guarantee": guarantee,
        },
    )
    local = factory.build("bench", join=[remote.address])
    await local.start()
    try:
        loop = asyncio.get_running_loop()
        latencies = []
        for i in range(200):  # warm-up (the first resolves "echo" through the registry)
            await local.router.request(
                Message(Performative.REQUEST, sender="", receiver="echo", content=i), 5
            )
        end = loop.time() + seconds
        while loop.time() < end:
            start = time.perf_counter()
            await local.router.request(
                Message(Performative.REQUEST, sender="", receiver="echo", content="ping"), 5
            )
            latencies.append((time.perf_counter() - start) * 1000)

        received = 0
        sent = 0
        total = 20_000
        window = 512
        done = asyncio.Event()
        room = asyncio.Event()

        def sink(message: Message) -> None:
            nonlocal received
            received += 1
            if sent - received <= window // 2:
                room.set()
            if received >= total:
                done.set()

        local.router.register("bench-sink", sink)
        start = time.perf_counter()
        while sent < total:
            local.router.send_nowait(
                Message(Performative.INFORM, sender="bench-sink", receiver="echo", content=sent)
            )
            sent += 1
            if sent - received >= window:
                room.clear()
                await asyncio.wait_for(room.wait(), 30)
        await asyncio.wait_for(done.wait(), 60)
        elapsed = time.perf_counter() - start
        return {
            "latency_ms": distribution(latencies),
            "targets_ms": {"p50": 5.0, "p99": 50.0},
            "throughput_msgs_per_s": round(total / elapsed),
            "throughput_note": "pipelined informs (512 in flight), each answered by the echo agent",
            "guarantee": guarantee,
        }
    finally:
        await local.stop()


def routing(
    base: Path, transport: str, seconds: float, guarantee: str = "at-most-once"
) -> dict[str, Any]:
    messaging = {"delivery_guarantee": guarantee}
    cluster = ProcessCluster(
        base, transport=transport, cluster=DEFAULTS, extra={"messaging": messaging}
    )
    try:
        (remote,) = cluster.start(1)
        remote.deploy("echo", echo_wasm())
        runner: Any = asyncio.run
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            pass
        return dict(runner(_routing(remote, base, transport, seconds, guarantee)))
    finally:
        cluster.close()


# -------------------------------------------------------------------------
# gossip bandwidth
# -------------------------------------------------------------------------


def bandwidth(base: Path, transport: str, window: float) -> dict[str, Any]:
    cluster = ProcessCluster(base, transport=transport, cluster=DEFAULTS)
    try:
        nodes = cluster.start(5)
        time.sleep(3.0)  # let joins settle
        before = {n.node_id: n.request("GET", "/api/v1/cluster/status")["gossip"] for n in nodes}
        time.sleep(window)
        after = {n.node_id: n.request("GET", "/api/v1/cluster/status")["gossip"] for n in nodes}
    finally:
        cluster.close()
    sent = [(after[k]["bytes_sent"] - before[k]["bytes_sent"]) / window for k in after]
    received = [(after[k]["bytes_received"] - before[k]["bytes_received"]) / window for k in after]
    return {
        "nodes": 5,
        "window_s": window,
        "bytes_sent_per_node_per_s": distribution(sent),
        "bytes_received_per_node_per_s": distribution(received),
        "note": "membership datagrams and push-pull; includes the load metadata refreshed "
        "every 5 s",
    }


# -------------------------------------------------------------------------
# failover
# -------------------------------------------------------------------------


def failover_round(
    base: Path, transport: str, timings: dict[str, Any], partition: dict[str, Any]
) -> dict[str, float]:
    """A fresh 3-node cluster; echo on n3; SIGKILL n3; until echo answers through n1."""
    import base64

    cluster = ProcessCluster(
        base, transport=transport, cluster=timings, extra={"partition": partition}
    )
    try:
        n1, _n2, n3 = cluster.start(3)
        module = base64.b64encode(echo_wasm()).decode()
        n1.request("POST", "/api/v1/agents", {"name": "echo", "wasm_module": module,
                                              "target_node": "n3"})  # fmt: skip
        cluster.wait_until(
            lambda: any(e["kind"] == "agent-replicated" for e in events(n3)), 30, "replicated"
        )
        time.sleep(1.0)  # a steady cluster
        killed_at = time.time()
        n3.kill()
        deadline = time.monotonic() + 60
        while True:
            try:
                if n1.ask("echo", "ping", wait_ms=100)["reply"]["content"] == "ping":
                    break
            except (ApiError, OSError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError("echo did not come back within 60 s")
            time.sleep(0.02)
        answered_at = time.time()
        failed = [t for n in cluster.nodes.values() if n.running
                  for t in [event_time(n, "failed", "n3", killed_at)] if t is not None]  # fmt: skip
        migrated = [
            e["at"]
            for n in cluster.nodes.values()
            if n.running
            for e in events(n)
            if e["kind"] == "agent-migrated" and e["node_id"] == n.node_id
            and e["at"] >= killed_at
        ]  # fmt: skip
        return {
            "kill_to_answer": answered_at - killed_at,
            "failed_to_running": min(migrated) - min(failed) if failed and migrated else -1.0,
        }
    finally:
        cluster.close()


def failover(
    base: Path, transport: str, timings: dict[str, Any], partition: dict[str, Any], rounds: int
) -> dict[str, Any]:
    samples = [
        failover_round(base / f"round{i}", transport, timings, partition) for i in range(rounds)
    ]
    return {
        "settings": {**timings, **partition} or "defaults",
        "nodes": 3,
        "kill_to_answer_s": distribution([s["kill_to_answer"] for s in samples]),
        "failed_to_running_s": distribution([s["failed_to_running"] for s in samples]),
    }


# -------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="Fewer rounds (smoke test).")
    parser.add_argument(
        "--only",
        default="join,detection,registry,routing,bandwidth,failover",
        help="Comma-separated figures to run.",
    )
    parser.add_argument(
        "--transport", default="tcp", help="tcp, quic or both (tcp,quic); routing runs each."
    )
    parser.add_argument(
        "--guarantee",
        default="at-most-once",
        help="Delivery guarantee of both nodes in the routing figure: at-most-once, "
        "at-least-once, or both (comma-separated); routing runs each.",
    )
    parser.add_argument("--out", type=Path, help="Also write the JSON here.")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    transports = [t.strip() for t in args.transport.split(",") if t.strip()]
    main_transport = transports[0]
    quick = args.quick
    result: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
        "transport": main_transport,
    }
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        base = Path(tmp)
        if "join" in only:
            result["join"] = join(base / "join", main_transport, 2 if quick else 5)
        if "detection" in only:
            result["detection_default"] = detection(
                base / "det-default", main_transport, DEFAULTS, 2 if quick else 8
            )
            result["detection_fast"] = detection(
                base / "det-fast", main_transport, FAST_LAN, 2 if quick else 8
            )
        if "registry" in only:
            result["registry"] = registry(base / "registry", main_transport, 10 if quick else 50)
        if "routing" in only:
            for transport in transports:
                for guarantee in args.guarantee.split(","):
                    key = f"routing_{transport}" + (
                        "" if guarantee == "at-most-once" else f"_{guarantee}"
                    )
                    result[key] = routing(
                        base / key, transport, 2.0 if quick else 5.0, guarantee.strip()
                    )
        if "bandwidth" in only:
            result["bandwidth"] = bandwidth(
                base / "bandwidth", main_transport, 5.0 if quick else 10.0
            )
        if "failover" in only:
            for label, timings, lease in (
                ("default", DEFAULTS, {}),
                ("fast", FAST_LAN, FAST_LEASE),
            ):
                result[f"failover_{label}"] = failover(
                    base / f"failover-{label}", main_transport, timings, lease, 2 if quick else 5
                )
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
