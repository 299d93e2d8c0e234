"""Membership figures from the seeded simulator (and real processes on loopback).

One command, JSON on stdout (and in ``--out``)::

    python benchmarks/bench_membership.py            # full run, a few minutes of CPU
    python benchmarks/bench_membership.py --quick    # fewer seeds, for a smoke test
    python benchmarks/bench_membership.py --only detection,bandwidth
    python benchmarks/bench_membership.py --only none --processes 5 --transport tcp,quic

All times are *simulated* seconds of :class:`caxton.testing.membership.SimCluster`
(1-3 ms one-way latency), so they do not depend on the machine's load; only the
``processes`` figure runs in real time.

Figures (targets from the cluster issue):

- ``join_convergence``: 100 nodes started within 1 s through one seed, every view
  complete (target <= 3 s after the last join), and one node joining an established
  100-node cluster.
- ``failure_detection``: a killed node marked failed by every survivor, at N=5 and
  N=100 with the default settings (target P99 <= 6.5 s at N=5) and at N=5 with a fast
  tuning (target ~2 s).
- ``false_failures``: one node losing 20% of its packets both ways, one node paused
  2 s; failures declared of live nodes (target 0).
- ``bandwidth``: gossip bytes per node per second in a steady cluster of 5 and 100.
- ``processes_<transport>`` (``--processes N``): N real OS processes on loopback, each
  a ``swim`` driver with the default settings on ``--transport`` (``udp-loopback``, the
  test double, or the real ``tcp``/``quic`` drivers in plaintext with a gossip key),
  wired as a node wires it: time from the last join until every view is complete
  (target <= 1 s), a 2 s SIGSTOP of one member (no false failure), a SIGKILL of another
  (time until every survivor marks it failed). Once ``caxton server start`` wires
  membership, the child program here is replaced by real node processes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from caxton.drivers.membership import MemberStatus
from caxton.membership.settings import SwimSettings
from caxton.membership.swim_core import suspicion_bounds
from caxton.testing.membership import SimCluster, formed_cluster

DEFAULT = SwimSettings()
#: A tuning for small LAN clusters that detects failures in about two seconds.
FAST = SwimSettings(
    gossip_interval=0.1, probe_interval=0.25, probe_timeout=0.125, suspicion_multiplier=3
)


def distribution(samples: Sequence[float]) -> dict[str, Any]:
    values = sorted(samples)
    if not values:
        return {"count": 0}

    def pct(p: float) -> float:
        return round(values[min(len(values) - 1, int(p * len(values)))], 3)

    return {
        "count": len(values),
        "mean": round(statistics.fmean(values), 3),
        "p50": pct(0.50),
        "p90": pct(0.90),
        "p99": pct(0.99),
        "max": round(values[-1], 3),
    }


def settings_summary(settings: SwimSettings) -> dict[str, Any]:
    keys = (
        "gossip_interval",
        "gossip_fanout",
        "probe_interval",
        "probe_timeout",
        "indirect_probes",
        "suspicion_multiplier",
        "push_pull_interval",
    )
    return {key: getattr(settings, key) for key in keys}


def formed(seed: int, nodes: int, settings: SwimSettings = DEFAULT) -> SimCluster:
    return formed_cluster(seed, nodes, settings)


def live_failures(sim: SimCluster, dead: set[str]) -> int:
    return sum(1 for _, _, member in sim.events("failed") if member not in dead)


# -------------------------------------------------------------------------
# Figures
# -------------------------------------------------------------------------


def join_convergence(seeds: int) -> dict[str, Any]:
    after_last_join, newcomer = [], []
    for seed in range(seeds):
        sim = SimCluster(seed)
        sim.start_nodes(100, stagger=1.0)
        sim.run_until(lambda sim=sim: len(sim.nodes) == 100, timeout=2, step=0.001)
        last_join = max(node.started_at for node in sim.nodes.values())
        took = sim.run_until(sim.converged, timeout=60, step=0.01)
        after_last_join.append(sim.now - last_join if took is not None else float("inf"))
        sim.run_for(5)
        sim.add_node("newcomer", [f"n{seed % 100}"])
        seen = sim.run_until(
            lambda sim=sim: sim.all_see("newcomer", MemberStatus.ALIVE), timeout=60, step=0.01
        )
        newcomer.append(seen if seen is not None else float("inf"))
    return {
        "nodes": 100,
        "settings": settings_summary(DEFAULT),
        "all_start_within_1s_seconds_after_last_join": distribution(after_last_join),
        "one_more_node_seen_by_all_seconds": distribution(newcomer),
        "target_seconds": 3.0,
    }


def detection_samples(
    nodes: int, settings: SwimSettings, clusters: int, kills_per_cluster: int
) -> tuple[list[float], int]:
    samples, false_failures = [], 0
    for seed in range(clusters):
        sim = formed(seed, nodes, settings)
        dead: set[str] = set()
        for _ in range(kills_per_cluster):
            victim = sim.rng.choice(sorted(set(sim.nodes) - dead - {"n0"}))
            sim.kill(victim)
            dead.add(victim)
            took = sim.run_until(
                lambda v=victim, sim=sim: sim.all_see(v, MemberStatus.FAILED), 120, step=0.01
            )
            samples.append(took if took is not None else float("inf"))
            sim.run_for(3.0 + 2.0 * sim.rng.random())
        false_failures += live_failures(sim, dead)
    return samples, false_failures


def failure_detection(quick: bool) -> dict[str, Any]:
    scale = 0.2 if quick else 1.0
    out: dict[str, Any] = {}
    cases = [
        ("n5_default", 5, DEFAULT, int(600 * scale), 1),
        ("n100_default", 100, DEFAULT, max(2, int(8 * scale)), 10),
        ("n5_fast", 5, FAST, int(600 * scale), 1),
        ("n100_fast", 100, FAST, max(2, int(4 * scale)), 10),
    ]
    for name, nodes, settings, clusters, kills in cases:
        samples, false_failures = detection_samples(nodes, settings, clusters, kills)
        low, high = suspicion_bounds(settings, nodes)
        out[name] = {
            "nodes": nodes,
            "settings": settings_summary(settings),
            "suspicion_timeout_min_max_seconds": [round(low, 3), round(high, 3)],
            "seconds_until_all_survivors_mark_failed": distribution(samples),
            "false_failures": false_failures,
        }
    out["target_p99_seconds"] = {"n5_default": 6.5, "n5_fast": 2.0}
    return out


def false_failures(quick: bool) -> dict[str, Any]:
    scale = 0.2 if quick else 1.0
    out: dict[str, Any] = {}
    for nodes, seeds in ((5, int(300 * scale)), (100, max(1, int(4 * scale)))):
        for settings_name, settings in (("default", DEFAULT), ("fast", FAST)):
            lossy = 0
            for seed in range(seeds):
                sim = formed(seed, nodes, settings)
                sim.set_loss(f"n{1 + seed % (nodes - 1)}", 0.2)
                sim.run_for(120)
                lossy += live_failures(sim, set())
            out[f"loss20_n{nodes}_{settings_name}"] = {
                "runs": seeds,
                "simulated_seconds_each": 120,
                "false_failures": lossy,
            }
        paused = 0
        for seed in range(seeds):
            sim = formed(seed, nodes)
            for victim in sim.rng.sample(sorted(sim.nodes), min(5, nodes)):
                sim.pause(victim, 2.0)
                sim.run_for(20)
            paused += live_failures(sim, set())
        out[f"pause2s_n{nodes}_default"] = {
            "runs": seeds,
            "pauses_each": min(5, nodes),
            "false_failures": paused,
        }
    out["target_false_failures"] = 0
    out["note"] = (
        "a 2 s pause exceeds the fast tuning's suspicion timeout, so it is only a "
        "property of the default settings"
    )
    return out


def bandwidth(quick: bool) -> dict[str, Any]:
    window = 90.0 if quick else 270.0
    out: dict[str, Any] = {}
    for nodes in (5, 100):
        sim = formed(nodes, nodes)
        before = {n: node.core.stats.bytes_sent for n, node in sim.nodes.items()}
        gossip_before = {n: node.core.stats.datagram_bytes_sent for n, node in sim.nodes.items()}
        sim.run_for(window)
        per_node = [
            (node.core.stats.bytes_sent - before[n]) / window for n, node in sim.nodes.items()
        ]
        datagram_only = [
            (node.core.stats.datagram_bytes_sent - gossip_before[n]) / window
            for n, node in sim.nodes.items()
        ]
        out[f"n{nodes}"] = {
            "window_seconds": window,
            "bytes_per_second_per_node": distribution(per_node),
            "datagram_bytes_per_second_per_node": distribution(datagram_only),
            "push_pull_interval_seconds": DEFAULT.push_pull_interval,
        }
    out["note"] = "steady state (no churn): probes, acks and periodic push-pull; sent bytes"
    return out


# -------------------------------------------------------------------------
# Real processes on loopback
# -------------------------------------------------------------------------

#: One cluster member as its own OS process: a ``swim`` driver with the default
#: settings on the chosen transport, wired as a node wires it. It prints its address,
#: then one JSON line per membership event, until it is killed.
_CHILD = r"""
import asyncio, json, sys, time
from importlib.metadata import entry_points
from pathlib import Path
from caxton.drivers.base import DriverContext
from caxton.drivers.transport import FrameKind
from caxton.membership.swim import SwimMembership
from caxton.plugins import PluginHost
from caxton.testing.conformance import driver_config
from caxton.testing.membership import UdpLoopbackTransport
from caxton.units import format_address

def say(**fields):
    print(json.dumps(fields), flush=True)

async def main(spec):
    host = PluginHost(use_entry_points=False, env={})
    context = DriverContext(node_id=spec["id"], data_dir=Path("."), hook=host.hook)
    if spec["transport"] == "udp-loopback":
        transport = UdpLoopbackTransport()
    else:
        from caxton.transport import TransportSettings
        from caxton.transport.keyring import Keyring
        (ep,) = [e for e in entry_points(group="caxton.transport") if e.name == spec["transport"]]
        cls = ep.load()
        settings = TransportSettings(
            spec["id"], plaintext=True, keyring=Keyring.from_config([spec["key"]])
        )
        transport = cls(driver_config(cls), context, settings=settings)
        await transport.start()
    membership = None

    async def on_frame(frame):
        if frame.kind == FrameKind.GOSSIP and membership is not None:
            return await membership.on_gossip_frame(frame)
        return None

    def on_datagram(payload, source):
        if membership is not None:
            membership.on_datagram(payload, source)

    bound = await transport.listen(("127.0.0.1", 0), on_frame, on_datagram)
    context.services["transport"] = transport
    config = driver_config(SwimMembership, {"advertise_addr": format_address(bound)})
    membership = SwimMembership(config, context)
    membership.subscribe(
        lambda e: say(event=e.kind.value, member=e.member.node_id, t=time.time())
    )
    await membership.start()
    say(address=list(bound))
    say(joining=time.time())
    if spec["seed"]:
        await membership.join([tuple(spec["seed"])])
    await asyncio.Event().wait()

asyncio.run(main(json.loads(sys.argv[1])))
"""


class _Process:
    def __init__(self, node_id: str, transport: str, key: str, seed: Any) -> None:
        import threading

        self.node_id = node_id
        spec = {"id": node_id, "transport": transport, "key": key, "seed": seed}
        self.popen = subprocess.Popen(
            [sys.executable, "-c", _CHILD, json.dumps(spec)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.popen.stdout is not None
        self.address = json.loads(self.popen.stdout.readline())["address"]
        self.joining = json.loads(self.popen.stdout.readline())["joining"]
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.events.append(json.loads(line))

    def view(self) -> dict[str, str]:
        status: dict[str, str] = {}
        for event in list(self.events):
            kind = event["event"]
            if kind in ("joined", "alive", "updated"):
                status[event["member"]] = "alive"
            elif kind in ("suspect", "failed", "left"):
                status[event["member"]] = kind
        return status

    def first(self, kind: str, member: str, after: float = 0.0) -> float | None:
        for event in list(self.events):
            if event["event"] == kind and event["member"] == member and event["t"] >= after:
                return float(event["t"])
        return None

    def signal(self, signum: int) -> None:
        os.kill(self.popen.pid, signum)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(timeout=10)


def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def _process_round(count: int, transport: str, key: str) -> tuple[float, float, int]:
    """One cluster of ``count`` processes: formation, a 2 s SIGSTOP of one member, a
    SIGKILL of another. Returns (convergence, detection, false failures)."""
    import signal

    members: list[_Process] = []
    try:
        for i in range(count):
            seed = members[0].address if members else None
            members.append(_Process(f"p{i}", transport, key, seed))
        last_join = max(p.joining for p in members)

        def complete() -> bool:
            return all(sum(s == "alive" for s in p.view().values()) == count - 1 for p in members)

        if not _wait(complete, 30):
            raise RuntimeError(f"{count} processes did not converge in 30 s")
        converged = max(max(e["t"] for e in p.events if e["event"] == "joined") for p in members)
        time.sleep(2)
        paused = members[1]
        paused.signal(signal.SIGSTOP)
        time.sleep(2.0)
        paused.signal(signal.SIGCONT)
        time.sleep(8)
        victim = members[-1]
        victim.stop()
        killed_at = time.time()
        survivors = members[:-1]

        def all_marked() -> bool:
            return all(p.first("failed", victim.node_id) for p in survivors)

        _wait(all_marked, 60)
        marks = [p.first("failed", victim.node_id) for p in survivors]
        wrong = sum(
            1
            for p in members
            for e in p.events
            if e["event"] == "failed" and e["member"] != victim.node_id
        )
        return converged - last_join, max(m or float("inf") for m in marks) - killed_at, wrong
    finally:
        for member in members:
            member.stop()


def processes(count: int, transport: str, rounds: int) -> dict[str, Any]:
    """``count`` real processes, ``rounds`` times (see :func:`_process_round`)."""
    from caxton.transport.keyring import generate_key

    results = [_process_round(count, transport, generate_key()) for _ in range(rounds)]
    return {
        "transport": transport,
        "processes": count,
        "rounds": rounds,
        "seconds_from_last_join_until_all_views_complete": distribution([r[0] for r in results]),
        "sigkill_seconds_until_all_survivors_mark_failed": distribution([r[1] for r in results]),
        "false_failures_with_a_2s_sigstop": sum(r[2] for r in results),
        "targets": {"convergence_seconds": 1.0, "detection_p99_seconds": 6.5},
        "note": "real time on a shared machine; default settings",
    }


FIGURES: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "join_convergence": lambda a: join_convergence(5 if a.quick else 20),
    "failure_detection": lambda a: failure_detection(a.quick),
    "false_failures": lambda a: false_failures(a.quick),
    "bandwidth": lambda a: bandwidth(a.quick),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer seeds (smoke test)")
    parser.add_argument("--only", default="", help="comma-separated figure names")
    parser.add_argument("--processes", type=int, default=0, help="also run N real processes")
    parser.add_argument(
        "--transport",
        default="udp-loopback",
        help="with --processes: comma-separated transports (udp-loopback, tcp, quic)",
    )
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    wanted = [name for name in args.only.split(",") if name] or list(FIGURES)
    unknown = set(wanted) - set(FIGURES) - {"none"}
    if unknown:
        parser.error(f"unknown figure(s) {', '.join(sorted(unknown))}; know {', '.join(FIGURES)}")
    wanted = [name for name in wanted if name != "none"]
    report: dict[str, Any] = {
        "benchmark": "membership",
        "simulated": True,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "figures": {},
    }
    for name in wanted:
        started = time.perf_counter()
        report["figures"][name] = FIGURES[name](args)
        report["figures"][name]["cpu_seconds"] = round(time.perf_counter() - started, 1)
        print(f"{name}: done", file=sys.stderr, flush=True)
    if args.processes:
        rounds = 2 if args.quick else 5
        for transport in args.transport.split(","):
            key = f"processes_{transport}"
            report["figures"][key] = processes(args.processes, transport, rounds)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
