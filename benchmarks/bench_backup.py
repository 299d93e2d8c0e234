#!/usr/bin/env python3
"""Backup benchmark: ``python3 benchmarks/bench_backup.py [--quick] [--out PATH]``.

A real node in this process (wasmtime agents, router, SQLite store, REST API; uvloop
when installed) with 10,000 echo agents and 1 GiB of key/value state (100 KiB of random
bytes per agent, which does not compress), serving a steady stream of request/reply
messages to random agents (open loop, one every ``--interval`` ms). It measures:

* the P50/P99 message round trip for ``--window`` seconds before the backup, and
  during the backup (the issue's target: P99 during <= 2x before);
* the backup's throughput: database bytes / seconds of ``BackupService.create`` (the
  online copy, the sha256, the compression and the rename, all in a worker thread).

Prints JSON; ``--out`` also writes it (default benchmarks/results/backup.json).
``--quick``: 1,000 agents and 64 MiB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ECHO_WAT = ROOT / "examples" / "agents" / "wat" / "echo.wat"


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    if not ordered:
        return {"count": 0}

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {"count": len(ordered), "p50_ms": at(0.50), "p99_ms": at(0.99), "max_ms": at(1.0)}


class Load:
    """Requests to random agents every ``interval`` seconds; round trips recorded."""

    def __init__(self, node: Any, agents: int, interval: float) -> None:
        self.node = node
        self.agents = agents
        self.interval = interval
        self.sent: dict[str, float] = {}
        self.samples: list[float] = []
        self.lost = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        from caxton.messaging import Message

        def reply(message: Message) -> None:
            started = self.sent.pop(str(message.in_reply_to), None)
            if started is not None:
                self.samples.append(time.perf_counter() - started)

        self.node.router.register("bench-client", reply)
        self._task = asyncio.get_running_loop().create_task(self._run(Message))

    async def _run(self, message_class: Any) -> None:
        n = 0
        next_at = time.perf_counter()
        while True:
            n += 1
            message = message_class(
                performative="request",
                sender="bench-client",
                receiver=f"a{random.randrange(self.agents)}",
                content=n,
            )
            self.sent[message.message_id] = time.perf_counter()
            try:
                self.node.router.send_nowait(message)
            except Exception:
                self.lost += 1
            next_at += self.interval
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

    def take(self) -> list[float]:
        samples, self.samples = self.samples, []
        return samples

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import wasmtime

    from caxton.testing import NodeFactory

    echo = bytes(wasmtime.wat2wasm(ECHO_WAT.read_text()))
    with tempfile.TemporaryDirectory(prefix="caxton-bench-backup-") as tmp:
        factory = NodeFactory(tmp)
        config = {"runtime.max_agents": args.agents + 10, "messaging.queue_size": 100_000}
        async with factory.node("bench", config=config) as node:
            started = time.perf_counter()
            for base in range(0, args.agents, 200):
                await asyncio.gather(
                    *(
                        node.agents.deploy(f"a{i}", echo)
                        for i in range(base, min(args.agents, base + 200))
                    )
                )
            deploy_s = time.perf_counter() - started
            per_agent = args.state_mb * 2**20 // args.agents
            value = 10 * 1024
            started = time.perf_counter()
            for agent in node.agents.list():
                for k in range(max(1, per_agent // value)):
                    node.store.kv_put(agent.id, f"k{k}".encode(), os.urandom(value))
                if node.store.pending_rows() > 20_000:
                    await node.store.flush()
            await node.store.flush()
            fill_s = time.perf_counter() - started
            database = node.store.path.stat().st_size
            print(f"... {args.agents} agents, {database / 2**20:.0f} MiB", file=sys.stderr)

            load = Load(node, args.agents, args.interval / 1000)
            load.start()
            await asyncio.sleep(1.0)  # warm up
            load.take()
            await asyncio.sleep(args.window)
            before = load.take()
            started = time.perf_counter()
            path, manifest = await node.backups.create()
            backup_s = time.perf_counter() - started
            during = load.take()
            await load.stop()
            return {
                "agents": args.agents,
                "deploy_s": round(deploy_s, 1),
                "fill_s": round(fill_s, 1),
                "database_mb": round(manifest.database_size / 2**20, 1),
                "backup_file_mb": round(path.stat().st_size / 2**20, 1),
                "backup_s": round(backup_s, 2),
                "throughput_mb_s": round(manifest.database_size / 2**20 / backup_s, 1),
                "interval_ms": args.interval,
                "latency_before": percentiles(before),
                "latency_during": percentiles(during),
                "p99_ratio": round(
                    percentiles(during)["p99_ms"] / max(percentiles(before)["p99_ms"], 1e-9), 2
                )
                if before and during
                else None,
                "lost": load.lost,
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
            }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--state-mb", type=int, default=1024, help="Key/value state, MiB")
    parser.add_argument("--interval", type=float, default=2.0, help="ms between requests")
    parser.add_argument("--window", type=float, default=10.0, help="seconds measured before")
    parser.add_argument("--quick", action="store_true", help="1,000 agents, 64 MiB")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "backup.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.agents, args.state_mb, args.window = 1000, 64, 5.0
    try:
        import uvloop

        result = uvloop.run(run(args))
    except ImportError:
        result = asyncio.run(run(args))
    text = json.dumps(result, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
