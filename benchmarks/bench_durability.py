"""Durability modes side by side: ``quorum`` vs ``async`` vs ``local`` for the counter agent.

One command, JSON on stdout (and in ``--out``)::

    python benchmarks/bench_durability.py            # every mode, about a minute each
    python benchmarks/bench_durability.py --quick    # fewer messages, a smoke test
    python benchmarks/bench_durability.py --modes quorum

For each mode, a 3-node cluster on loopback (tcp, plaintext with a gossip key), every
node with ``coordination.cluster.durability`` set to the mode and ``replicas = 2``: two
``caxton server start`` processes (n1, n2) and this script's own node (``bench``), which
hosts ``--agents`` counter agents (the example agent: each message increments a
key/value count and replies with it), replicated to n1 and n2. Measured on ``bench``,
through its router (the clients are local, so the figures are the node's, not a
remote client's forwarding path):

- ``latency_ms``: sequential request/reply to one counter (P50/P99): in ``quorum`` the
  write to both holders, their SQLite commit and this node's, before the reply leaves;
  in ``local`` this node's SQLite commit; in ``async`` nothing;
- ``throughput_msgs_per_s``: pipelined requests (``--window`` in flight) spread over the
  counters, each answered (every reply follows a state change, so in ``quorum`` each
  waits for a majority of its replica set);
- ``owner_cpu_us_per_msg`` / ``holders_cpu_us_per_msg``: CPU time per message of this
  node and of the two holder processes together during that run (1e6 / owner µs = msg/s
  one core could carry); it moves with the machine's load less than msg/s does, but it
  moves: the same code measured 48-57 µs one day and 128-138 µs the next.

Targets for ``quorum`` (issue 12): >= 20,000 msg/s per node and P99 <= 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "cluster"))

from bench_cluster import distribution  # noqa: E402
from cluster_support import ProcessCluster  # noqa: E402

MODES = ("quorum", "async", "local")


def counter_wasm(directory: Path) -> bytes:
    from caxton.testing.sandbox import build_example_agents

    return build_example_agents(directory)["counter"]


def process_cpu(cluster: ProcessCluster) -> float:
    """CPU seconds (user + system) the cluster's node processes have used so far."""
    total = 0
    for node in cluster.nodes.values():
        if node.process is not None:
            fields = Path(f"/proc/{node.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


async def until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    """Poll ``condition`` (setup only, never timed)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the cluster did not settle")
        await asyncio.sleep(0.05)


async def _measure(
    cluster: ProcessCluster,
    base: Path,
    mode: str,
    wasm: bytes,
    agents: int,
    messages: int,
    window: int,
    seconds: float,
) -> dict[str, Any]:
    from caxton.messaging import Message, Performative
    from caxton.testing import NodeFactory

    n1 = cluster.nodes["n1"]
    factory = NodeFactory(
        base / "bench",
        use_entry_points=True,
        config={
            "transport.plaintext": True,
            "security.cluster.gossip_keys": [cluster.gossip_key],
            "plugins.transport": cluster.transport,
            "coordination.cluster.replicas": 2,
            "coordination.cluster.durability": mode,
            "observability.log_level": "warning",
        },
    )
    local = factory.build("bench", join=[n1.address])
    await local.start()
    try:
        await until(lambda: len(local.membership.members()) >= 3)
        names = [f"counter{i}" for i in range(agents)]
        for name in names:
            await local.agents.deploy(name, wasm)
        holders = local.cluster.failover.holders
        await until(lambda: all(len(holders.get(local.agents.get(n).id, ())) == 2 for n in names))
        for name in names:  # warm-up
            for _ in range(50):
                await local.router.request(
                    Message(Performative.REQUEST, sender="", receiver=name, content="tick"), 10
                )
        loop = asyncio.get_running_loop()
        latencies = []
        end = loop.time() + seconds
        while loop.time() < end:
            start = time.perf_counter()
            await local.router.request(
                Message(Performative.REQUEST, sender="", receiver=names[0], content="tick"), 10
            )
            latencies.append((time.perf_counter() - start) * 1000)

        received = 0
        sent = 0
        done = asyncio.Event()
        room = asyncio.Event()

        def sink(message: Message) -> None:
            nonlocal received
            received += 1
            if sent - received <= window // 2:
                room.set()
            if received >= messages:
                done.set()

        local.router.register("bench-sink", sink)
        off_loop = local.agents.off_loop
        on_workers = off_loop.calls if off_loop is not None else 0
        holders_cpu = process_cpu(cluster)
        owner_cpu = time.process_time()
        start = time.perf_counter()
        while sent < messages:
            local.router.send_nowait(
                Message(
                    Performative.REQUEST,
                    sender="bench-sink",
                    receiver=names[sent % agents],
                    content="tick",
                )
            )
            sent += 1
            if sent - received >= window:
                room.clear()
                await asyncio.wait_for(room.wait(), 60)
        await asyncio.wait_for(done.wait(), 120)
        elapsed = time.perf_counter() - start
        owner_cpu = time.process_time() - owner_cpu
        holders_cpu = process_cpu(cluster) - holders_cpu
        return {
            "latency_ms": distribution(latencies),
            "throughput_msgs_per_s": round(messages / elapsed),
            # one core's worth of the owner's is 1e6 / owner_cpu_us_per_msg messages/s
            # (less load-bound than msg/s, not free of it: see docs/performance.md)
            "owner_cpu_us_per_msg": round(owner_cpu / messages * 1e6, 1),
            "holders_cpu_us_per_msg": round(holders_cpu / messages * 1e6, 1),
            "outputs_held_and_released": local.agents.outputs.released,
            # calls judged heavy (slow on a loaded machine) run on worker threads, with a
            # thread hop per host call: a sign the figures are the machine's load's
            "calls_on_workers": (off_loop.calls if off_loop is not None else 0) - on_workers,
        }
    finally:
        await local.stop()


def measure_mode(
    mode: str, base: Path, wasm: bytes, agents: int, messages: int, window: int, seconds: float
) -> dict[str, Any]:
    cluster = ProcessCluster(
        base,
        cluster={"replicas": 2, "durability": mode},
        extra={"observability": {"log_level": "warning"}},
    )
    try:
        cluster.start(2)
        runner: Any = asyncio.run
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            pass
        measured = _measure(cluster, base, mode, wasm, agents, messages, window, seconds)
        return {"durability": mode, **dict(runner(measured))}
    finally:
        cluster.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=5.0, help="of sequential requests")
    parser.add_argument("--quick", action="store_true", help="fewer messages, a smoke run")
    parser.add_argument("--out", type=Path)
    options = parser.parse_args()
    if options.quick:
        options.messages, options.seconds = 5_000, 1.0
    modes = [m for m in options.modes.split(",") if m]
    with tempfile.TemporaryDirectory(prefix="caxton-bench-durability-") as tmp:
        base = Path(tmp)
        wasm = counter_wasm(base / "agents")
        result: dict[str, Any] = {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "nodes": 3,
            "agents_on_n1": options.agents,
            "window": options.window,
            "targets_quorum": {"msgs_per_s_per_node": 20_000, "p99_ms": 5.0},
        }
        for mode in modes:
            result[mode] = measure_mode(
                mode,
                base / mode,
                wasm,
                options.agents,
                options.messages,
                options.window,
                options.seconds,
            )
            print(json.dumps({mode: result[mode]}), file=sys.stderr, flush=True)
    text = json.dumps(result, indent=2)
    print(text)
    if options.out:
        options.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
