#!/usr/bin/env python3
"""Agents benchmark: ``python3 benchmarks/bench_agents.py [--quick] [--json PATH]``.

Runs a real node core in one process (wasmtime sandbox, router, SQLite store, agent
manager; uvloop when installed) and measures:

* **routing**: agent -> agent request/reply through the router with wasm on both ends.
  A ``pinger`` agent (WAT, below) sends a request to the ``echo`` example agent on every
  message it gets; echo replies; each reply makes the pinger send again. The time
  between two deliveries to the pinger is one round trip (two messages, two wasm
  calls, two router hops): P50/P99 and messages/s;
* **overhead**: message processing per message excluding agent work: the cost of one
  message from ``router.send_nowait`` to a minimal agent (returns at once), minus the
  cost of calling that agent's ``handle_message`` directly with the same bytes;
* **startup**: ``start_agent`` of a stopped agent whose module is compiled and cached
  (instance from the sandbox's pool or pre-linked template, ``agent_init``, router
  registration): P50/P99; and ``deploy`` of a new agent of an already compiled module
  (the same plus a committed store write);
* **first deploy**: deploy of a module never seen before (compile included);
* **scale**: N concurrent agents on one node (10,000 by default): time to deploy them
  all, RSS per agent, and one message to each.

Targets (docs/performance.md): routing P50 <= 100 us, P99 <= 1 ms, >= 50,000 msgs/s;
startup P50 <= 1 ms, P99 <= 10 ms. Prints JSON; ``--json`` also writes it to a file
(default benchmarks/results/agents.json). Figures on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from caxton.agents import AgentManager

ROOT = Path(__file__).resolve().parent.parent
ECHO_WAT = ROOT / "examples" / "agents" / "wat" / "echo.wat"

#: Sends {"performative":"request","receiver":"echo","content":1} on every message.
PINGER_WAT = """
(module
  (import "caxton" "send" (func $send (param i32 i32) (result i32)))
  (@custom "caxton.abi" "\\01")
  (memory (export "memory") 1)
  (data (i32.const 16) "{\\"performative\\":\\"request\\","
                       "\\"receiver\\":\\"echo\\",\\"content\\":1}")
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle_message") (param i32 i32) (result i32)
    (call $send (i32.const 16) (i32.const 56)))
)
"""

#: Does nothing with a message: the agent work is as small as an agent's can be.
SINK_WAT = """
(module
  (@custom "caxton.abi" "\\01")
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle_message") (param i32 i32) (result i32) (i32.const 0))
)
"""


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    n = len(ordered)

    def at(q: float) -> float:
        return round(ordered[min(n - 1, int(q * n))] / 1000, 2)

    return {
        "p50_us": at(0.50),
        "p90_us": at(0.90),
        "p99_us": at(0.99),
        "max_us": round(ordered[-1] / 1000, 2),
        "mean_us": round(statistics.fmean(ordered) / 1000, 2),
        "samples": n,
    }


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Bench:
    def __init__(self, data_dir: Path, max_agents: int, sandbox: str = "wasmtime") -> None:
        import wasmtime

        self.sandbox_name = sandbox
        self.data_dir = data_dir
        self.max_agents = max_agents
        self.echo = bytes(wasmtime.wat2wasm(ECHO_WAT.read_text()))
        self.pinger = bytes(wasmtime.wat2wasm(PINGER_WAT))
        self.sink = bytes(wasmtime.wat2wasm(SINK_WAT))

    async def __aenter__(self) -> Bench:
        from caxton.drivers.base import DriverContext
        from caxton.messaging import Router
        from caxton.plugins import PluginHost
        from caxton.store import Store

        # The sandbox driver comes through its entry point, as on a node.
        driver = PluginHost().driver_class("sandbox", self.sandbox_name)
        self.host = PluginHost(use_entry_points=False)
        context = DriverContext(node_id="bench", data_dir=self.data_dir, hook=self.host.hook)
        self.sandbox = driver({}, context)
        await self.sandbox.start()
        self.store = Store(self.data_dir / "local.db")
        await self.store.open()
        self.router = Router(node_id="bench", queue_size=100_000)
        self.manager = self._manager()
        await self.manager.start()
        await self.router.start()
        return self

    def _manager(self) -> AgentManager:
        from caxton.agents import AgentManager
        from caxton.drivers.sandbox import ResourceLimits

        return AgentManager(
            node_id="bench",
            sandbox=self.sandbox,
            router=self.router,
            store=self.store,
            hook=self.host.hook,
            node=None,
            max_agents=self.max_agents,
            default_limits=ResourceLimits(max_memory_bytes=16 * 1024 * 1024),
            limit_ceiling=ResourceLimits(),
            restart_policy="on-failure",
            restart_max=5,
            restart_backoff=0.1,
        )

    async def __aexit__(self, *exc: object) -> None:
        await self.manager.close()
        await self.router.close()
        await self.store.close()
        await self.sandbox.close()

    # -- routing -----------------------------------------------------------------------

    async def routing(self, round_trips: int, pingers: int) -> dict[str, Any]:
        await self.manager.deploy("echo", self.echo)
        stamps, elapsed = await self._ping(1, round_trips)
        deltas = [b - a for a, b in itertools.pairwise(stamps[0][1:])]
        result: dict[str, Any] = {"latency": percentiles(deltas)}
        result["latency"]["round_trips_per_s"] = round(round_trips / elapsed)
        result["latency"]["messages_per_s"] = 2 * round(round_trips / elapsed)
        _, elapsed = await self._ping(pingers, round_trips)
        result["throughput"] = {
            "pingers": pingers,
            "round_trips_per_s": round(round_trips / elapsed),
            "messages_per_s": 2 * round(round_trips / elapsed),
        }
        result["note"] = (
            "latency: one pinger, one sample = one round trip pinger -> echo -> pinger "
            "(2 messages, 2 wasm calls); throughput: several pingers in flight at once"
        )
        await self.manager.remove("echo")
        return result

    async def _ping(self, pingers: int, round_trips: int) -> tuple[list[list[int]], float]:
        """Run ``pingers`` ping-pong loops with echo until ``round_trips`` in total."""
        from caxton.messaging import Message

        clock = time.perf_counter_ns
        done = asyncio.get_running_loop().create_future()
        stamps: list[list[int]] = []
        total = 0

        def timed(deliver: Callable[[Message], None], mine: list[int]) -> Callable[..., None]:
            def wrapper(message: Message) -> None:
                nonlocal total
                mine.append(clock())
                total += 1
                if total <= round_trips:
                    deliver(message)
                elif not done.done():
                    done.set_result(None)

            return wrapper

        # The ping-pong loops are exactly what the loop guard stops (docs/security.md):
        # lift it for the measurement, which ends the loops itself after round_trips.
        self.manager.loop_guard.max_hops = 2 * round_trips + 2
        names = [f"pinger-{i}" for i in range(pingers)]
        for name in names:
            await self.manager.deploy(name, self.pinger)
            stamps.append([])
            runtime = self.manager.runtime(name)
            self.router.register(name, timed(runtime.deliver, stamps[-1]), replace=True)
        gc.disable()
        try:
            start = clock()
            for name in names:
                self.router.send_nowait(
                    Message(performative="inform", sender="echo", receiver=name, content=0)
                )
            await asyncio.wait_for(done, 300)
            elapsed = (clock() - start) / 1e9
        finally:
            gc.enable()
        for name in names:
            await self.manager.remove(name)
        return stamps, elapsed

    # -- per-message overhead -------------------------------------------------------------

    async def overhead(self, messages: int) -> dict[str, Any]:
        from caxton.messaging import Message

        await self.manager.deploy("sink", self.sink)
        runtime = self.manager.runtime("sink")
        instance = runtime.instance
        assert instance is not None
        template = Message(performative="inform", sender="bench", receiver="sink", content=1)
        encoded = template.to_json()
        batch = [template.copy() for _ in range(messages)]
        clock = time.perf_counter_ns
        gc.disable()
        try:
            start = clock()
            for _ in range(messages):
                instance.handle_message(encoded)
            direct = (clock() - start) / messages
            handled = runtime.agent.counters.messages_handled
            send = self.router.send_nowait
            start = clock()
            for message in batch:
                send(message)
            # Yield until the router has delivered them all (no extra wakeups measured).
            while runtime.agent.counters.messages_handled < handled + messages:  # noqa: ASYNC110
                await asyncio.sleep(0)
            routed = (clock() - start) / messages
        finally:
            gc.enable()
        await self.manager.remove("sink")
        return {
            "agent_call_us": round(direct / 1000, 2),
            "routed_message_us": round(routed / 1000, 2),
            "overhead_per_message_us": round((routed - direct) / 1000, 2),
            "note": "routed = router.send_nowait .. handled by the agent; agent_call = "
            "instance.handle_message alone (wasm + sandbox boundary)",
        }

    # -- startup ---------------------------------------------------------------------------

    async def startup(self, agents: int) -> dict[str, Any]:
        clock = time.perf_counter_ns
        deploys: list[int] = []
        for i in range(agents):
            start = clock()
            await self.manager.deploy(f"start-{i}", self.echo)
            deploys.append(clock() - start)
        for i in range(agents):
            await self.manager.stop_agent(f"start-{i}")
        starts: list[int] = []
        for i in range(agents):
            start = clock()
            await self.manager.start_agent(f"start-{i}")
            starts.append(clock() - start)
        for i in range(agents):
            await self.manager.remove(f"start-{i}")
        return {
            "start_agent": percentiles(starts),
            "deploy_cached_module": percentiles(deploys),
            "note": "start_agent: instance from the pool/template + agent_init + router "
            "registration; deploy_cached_module adds the committed store write",
        }

    async def first_deploy(self, modules: int) -> dict[str, Any]:
        clock = time.perf_counter_ns
        samples: list[int] = []
        for i in range(modules):
            # A distinct module each time: a custom section makes a new sha256.
            name = b"bench-unique"
            payload = os.urandom(16) + str(i).encode()
            section = bytes([len(name)]) + name + payload
            wasm = self.echo + b"\x00" + bytes([len(section)]) + section
            start = clock()
            await self.manager.deploy(f"fresh-{i}", wasm)
            samples.append(clock() - start)
            await self.manager.remove(f"fresh-{i}")
        result = percentiles(samples)
        result["note"] = "compile of a module never seen (no memory or disk cache hit)"
        return result

    # -- scale ---------------------------------------------------------------------------

    async def scale(self, agents: int, concurrency: int, freeze: bool) -> dict[str, Any]:
        from caxton.messaging import Message

        gc.collect()
        before = rss_bytes()
        start = time.perf_counter()
        for base in range(0, agents, concurrency):
            await asyncio.gather(
                *(
                    self.manager.deploy(f"a{i}", self.echo)
                    for i in range(base, min(agents, base + concurrency))
                )
            )
        deploy_s = time.perf_counter() - start
        gc.collect()
        if freeze:
            # Long-lived agent objects out of the collector's way (what a node may do).
            gc.freeze()
        after = rss_bytes()
        replies = 0

        def count(message: Message) -> None:
            nonlocal replies
            replies += 1

        self.router.register("scale-client", count)
        start = time.perf_counter()
        for i in range(agents):
            self.router.send_nowait(
                Message(performative="request", sender="scale-client", receiver=f"a{i}", content=i)
            )
        while replies < agents:  # noqa: ASYNC110
            await asyncio.sleep(0)
        message_s = time.perf_counter() - start
        gc.collect()
        after_messages = rss_bytes()
        # A node restart: close the manager (agent_shutdown, flush), restore them all.
        start = time.perf_counter()
        await self.manager.close()
        close_s = time.perf_counter() - start
        self.manager = self._manager()
        start = time.perf_counter()
        await self.manager.start()
        restore_s = time.perf_counter() - start
        return {
            "agents": agents,
            "deploy_total_s": round(deploy_s, 3),
            "deploys_per_s": round(agents / deploy_s),
            "rss_before_mb": round(before / 2**20, 1),
            "rss_after_deploy_mb": round(after / 2**20, 1),
            "rss_per_agent_kb": round((after - before) / agents / 1024, 1),
            "rss_per_agent_after_one_message_kb": round(
                (after_messages - before) / agents / 1024, 1
            ),
            "one_message_to_each_s": round(message_s, 3),
            "close_all_s": round(close_s, 3),
            "restore_all_s": round(restore_s, 3),
            "concurrency": concurrency,
            "gc_freeze": freeze,
        }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    runs = {}
    for sandbox in [name.strip() for name in args.sandbox.split(",") if name.strip()]:
        print(f"... sandbox {sandbox}", file=sys.stderr, flush=True)
        runs[sandbox] = {"sandbox": sandbox, **await run_one(args, sandbox)}
    return next(iter(runs.values())) if len(runs) == 1 else {"sandboxes": runs}


async def run_one(args: argparse.Namespace, sandbox: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="caxton-bench-") as tmp:
        results: dict[str, Any] = {}
        async with Bench(Path(tmp) / "node", args.agents + 1000, sandbox) as bench:
            steps: list[tuple[str, Callable[[], Awaitable[dict[str, Any]]]]] = [
                ("routing", lambda: bench.routing(args.round_trips, args.pingers)),
                ("overhead", lambda: bench.overhead(args.round_trips)),
                ("startup", lambda: bench.startup(args.startups)),
                ("first_deploy", lambda: bench.first_deploy(args.compiles)),
                ("scale", lambda: bench.scale(args.agents, args.concurrency, args.gc_freeze)),
            ]
            for name, step in steps:
                print(f"... {name}", file=sys.stderr, flush=True)
                results[name] = await step()
        return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument(
        "--sandbox",
        default="wasmtime",
        help="sandbox driver(s) by entry-point name, comma-separated to compare them in one run",
    )
    parser.add_argument("--round-trips", type=int, default=50_000)
    parser.add_argument("--pingers", type=int, default=16, help="loops in flight (throughput)")
    parser.add_argument("--startups", type=int, default=500)
    parser.add_argument("--compiles", type=int, default=10)
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=100, help="deploys in flight")
    parser.add_argument("--no-uvloop", action="store_true")
    parser.add_argument(
        "--gc-freeze", action="store_true", help="gc.freeze() once the N agents are deployed"
    )
    parser.add_argument(
        "--json", type=Path, default=ROOT / "benchmarks" / "results" / "agents.json"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.round_trips, args.startups, args.compiles, args.agents = 2000, 50, 2, 200
    loop_name = "asyncio"
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if not args.no_uvloop:
        try:
            import uvloop

            loop_factory, loop_name = uvloop.new_event_loop, "uvloop"
        except ImportError:
            pass
    if loop_factory is not None and sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            results = runner.run(run(args))
    else:
        results = asyncio.run(run(args))
    report = {
        "benchmark": "agents",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "event_loop": loop_name,
        "targets": {
            "routing_p50_us": 100,
            "routing_p99_us": 1000,
            "messages_per_s": 50_000,
            "startup_p50_us": 1000,
            "startup_p99_us": 10_000,
        },
        **results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
