"""Membership figures from the seeded simulator (and real processes on loopback).

One command, JSON on stdout (and in ``--out``)::

    python benchmarks/bench_membership.py            # full run, a few minutes of CPU
    python benchmarks/bench_membership.py --quick    # fewer seeds, for a smoke test
    python benchmarks/bench_membership.py --only detection,bandwidth
    python benchmarks/bench_membership.py --processes 5   # add the multi-process figure

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
- ``processes`` (optional): N real OS processes, each a ``swim`` driver on the
  :class:`~caxton.testing.membership.UdpLoopbackTransport`, on loopback: time from
  the last join until every view is complete (target <= 1 s). This is the hook for the
  real transports: ``--transport`` will select ``tcp``/``quic`` once nodes wire them.
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
from caxton.testing.membership import SimCluster

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
    sim = SimCluster(seed, settings)
    sim.start_nodes(nodes)
    if sim.run_until(sim.converged, timeout=60) is None:
        raise RuntimeError(f"seed {seed}: {nodes} nodes did not converge")
    sim.run_for(2.0 + sim.rng.random())
    return sim


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
# Real processes on loopback (UDP test transport until nodes wire TCP/QUIC)
# -------------------------------------------------------------------------

_CHILD = r"""
import asyncio, json, sys, time
from caxton.testing.membership import MembershipConformance
from caxton.membership.swim import SwimMembership
from caxton.drivers.membership import MemberStatus

class Suite(MembershipConformance):
    driver_class = SwimMembership

async def main(node_id, expected, seed):
    suite = Suite()
    driver = await suite.start_node(node_id, "/tmp", probe_interval="1s", gossip_interval="200ms")
    print(json.dumps({"address": list(driver.local_member().address)}), flush=True)
    joined_at = time.time()
    if seed:
        await driver.join([tuple(seed)])
    while sum(m.status is MemberStatus.ALIVE for m in driver.members()) < expected:
        await asyncio.sleep(0.005)
    print(json.dumps({"joined_at": joined_at, "complete_at": time.time()}), flush=True)
    await asyncio.sleep(3)
    await suite.stop_node(driver)

args = json.loads(sys.argv[1])
asyncio.run(main(args["id"], args["expected"], args.get("seed")))
"""


def processes(count: int, transport: str) -> dict[str, Any]:
    if transport != "udp-loopback":
        return {
            "transport": transport,
            "status": "pending: nodes do not wire the membership driver to this transport "
            "yet; run with --transport udp-loopback",
        }
    children: list[subprocess.Popen[str]] = []
    seed_address = None
    try:
        for i in range(count):
            args = {"id": f"p{i}", "expected": count, "seed": seed_address}
            child = subprocess.Popen(
                [sys.executable, "-c", _CHILD, json.dumps(args)],
                stdout=subprocess.PIPE,
                text=True,
            )
            children.append(child)
            assert child.stdout is not None
            first = json.loads(child.stdout.readline())
            seed_address = seed_address or first["address"]
        reports = []
        for child in children:
            assert child.stdout is not None
            reports.append(json.loads(child.stdout.readline()))
    finally:
        for child in children:
            child.wait(timeout=30)
    last_join = max(r["joined_at"] for r in reports)
    complete = max(r["complete_at"] for r in reports)
    return {
        "transport": transport,
        "processes": count,
        "seconds_from_last_join_until_all_views_complete": round(complete - last_join, 3),
        "target_seconds": 1.0,
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
    parser.add_argument("--transport", default="udp-loopback")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    wanted = [name for name in args.only.split(",") if name] or list(FIGURES)
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
        report["figures"]["processes"] = processes(args.processes, args.transport)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
