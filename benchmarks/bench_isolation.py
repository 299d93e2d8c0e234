#!/usr/bin/env python3
"""Isolation benchmark: ``python3 benchmarks/bench_isolation.py [--quick] [--json PATH]``.

Runs one node (``caxton server start``, its own process) with a well-behaved ``echo``
agent beside the abuse catalogue of examples/agents/wat (``infinite_loop``,
``memory_bomb``, ``deep_recursion``, ``trap``, ``table_growth``, ``host_spin``,
``send_flood`` with its ``sink``, ``log_flood``, ``alloc_loop``, and two echoes that
answer each other), and measures, from a client in this process over REST:

* echo's request/reply latency (``POST /api/v1/messages`` with ``wait_ms``) alone, then
  while every abuser is sent messages (``--abuse`` each, from concurrent clients): P50,
  P99 and the ratio of the two P99s (issue 13's target: at most 2);
* how much the node's log grew per 1,000 abusive messages (target: under 1 MB), with
  and without the access log (one line per REST request, the benchmark's own clients').

Abusers are deployed with small limits, as untrusted agents should be (``--fuel``,
``--wall-ms``): a wasm call cannot be preempted, so the longest one an abuser may make is
what a neighbour can wait behind. Prints JSON; ``--json`` also writes it to a file.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WAT = ROOT / "examples" / "agents" / "wat"
ABUSERS = (
    "infinite_loop",
    "memory_bomb",
    "deep_recursion",
    "trap",
    "table_growth",
    "host_spin",
    "send_flood",
    "log_flood",
    "alloc_loop",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {"samples": len(ordered), "p50_ms": at(0.50), "p99_ms": at(0.99), "max_ms": at(1.0)}


def wasm(name: str) -> str:
    import wasmtime

    return base64.b64encode(wasmtime.wat2wasm((WAT / f"{name}.wat").read_text())).decode()


async def echo_latency(session: Any, url: str, requests: int) -> list[float]:
    body = {"performative": "request", "receiver": "echo", "content": 1, "wait_ms": 10_000}
    samples = []
    for _ in range(requests):
        started = time.perf_counter()
        async with session.post(f"{url}/api/v1/messages", json=body) as response:
            await response.read()
            assert response.status == 200, response.status
        samples.append(time.perf_counter() - started)
    return samples


async def abuse(session: Any, url: str, name: str, messages: int, stop: asyncio.Event) -> int:
    """Send ``messages`` to ``name``, a few at a time; return how many were sent."""
    sent = 0
    body = {"performative": "inform", "receiver": name, "content": "go"}
    while sent < messages and not stop.is_set():
        async with session.post(f"{url}/api/v1/messages", json=body) as response:
            await response.read()
        sent += 1
        await asyncio.sleep(0.005)
    return sent


async def abuse_all(url: str, names: list[str], messages: int, stop: Any, started: Any) -> int:
    import aiohttp

    done = asyncio.Event()

    async def watch() -> None:
        await asyncio.to_thread(stop.wait)
        done.set()

    watcher = asyncio.create_task(watch())
    started.set()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        sent = await asyncio.gather(*(abuse(session, url, n, messages, done) for n in names))
    watcher.cancel()
    return sum(sent)


def abuse_process(
    url: str, names: list[str], messages: int, stop: Any, started: Any, counts: Any
) -> None:
    """The abusive clients, in their own process: put how many messages they sent."""
    counts.put(asyncio.run(abuse_all(url, names, messages, stop, started)))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the node in its own process, drive it, stop it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="caxton-bench-isolation-") as tmp:
        log_path = Path(tmp) / "node.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAXTON_")}
        with log_path.open("wb") as log_file:
            node = subprocess.Popen(
                [sys.executable, "-c", "from caxton.cli.main import main; main()",
                 "server", "start", "--node-id", "bench", "--api-addr", f"127.0.0.1:{port}",
                 "--metrics-addr", "127.0.0.1:0", "--data-dir", str(Path(tmp) / "data")],
                stdout=log_file, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
            try:
                return asyncio.run(drive(args, url, log_path))
            finally:
                node.terminate()
                node.wait(30)
                if args.keep_log:
                    args.keep_log.write_bytes(log_path.read_bytes())


def file_size(path: Path) -> int:
    return path.stat().st_size


def lines_from(path: Path, offset: int) -> list[bytes]:
    with path.open("rb") as log:
        log.seek(offset)
        return log.read().splitlines(keepends=True)


async def drive(args: argparse.Namespace, url: str, log_path: Path) -> dict[str, Any]:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for _ in range(300):
            try:
                async with session.get(f"{url}/api/v1/health") as response:
                    if response.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        limits = {"max_fuel": args.fuel, "max_execution_time_ms": args.wall_ms}
        deploys = [("echo", "echo", None), ("sink", "echo", None)]
        deploys += [(name, name, limits) for name in args.abusers]
        deploys += [("ping", "echo", limits), ("pong", "echo", limits)]
        for name, module, agent_limits in deploys:
            body: dict[str, Any] = {"name": name, "wasm_module": wasm(module)}
            if agent_limits:
                body["resource_limits"] = agent_limits
            async with session.post(f"{url}/api/v1/agents", json=body) as response:
                assert response.status == 201, await response.text()
        await echo_latency(session, url, 50)  # warm up
        alone = await echo_latency(session, url, args.requests)

        log_before = file_size(log_path)
        # The abusive clients run in a process of their own: in this one, their HTTP
        # work would delay the echo client's reads on this loop, which is the client's
        # doing, not the node's.
        context = multiprocessing.get_context("spawn")
        stop, started, counts = context.Event(), context.Event(), context.Queue()
        abusers = context.Process(
            target=abuse_process, args=(url, args.abusers, args.abuse, stop, started, counts)
        )
        abusers.start()
        await asyncio.to_thread(started.wait, 120)  # a spawned process takes a while
        # the two-agent loop: one message starts it, the loop guard ends it
        async with session.post(
            f"{url}/api/v1/messages",
            json={"performative": "inform", "sender": "pong", "receiver": "ping", "content": 0},
        ) as response:
            await response.read()
        await asyncio.sleep(0.2)
        beside = await echo_latency(session, url, args.requests)
        stop.set()
        sent = await asyncio.to_thread(counts.get, True, 120) + 1
        abusers.join(30)
        await asyncio.sleep(1.0)
        grown = lines_from(log_path, log_before)
        log_growth = sum(map(len, grown))
        # the access log is one line per REST request, the clients' doing, not the agents'
        agents_growth = sum(len(line) for line in grown if b"caxton.api.access" not in line)
    p_alone, p_beside = percentiles(alone), percentiles(beside)
    return {
        "benchmark": "isolation",
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        "abusers": [*args.abusers, "ping<->pong"],
        "abuser_limits": {"max_fuel": args.fuel, "max_execution_time_ms": args.wall_ms},
        "echo_alone": p_alone,
        "echo_beside_abusers": p_beside,
        "p99_ratio": round(p_beside["p99_ms"] / p_alone["p99_ms"], 2),
        "abusive_messages": sent,
        "log_growth_bytes": log_growth,
        "log_bytes_per_1000_abusive_messages": round(log_growth * 1000 / max(sent, 1)),
        "log_bytes_per_1000_abusive_messages_without_access_log": round(
            agents_growth * 1000 / max(sent, 1)
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="echo requests per phase")
    parser.add_argument("--abuse", type=int, default=1000, help="messages to each abuser")
    parser.add_argument("--fuel", type=int, default=1_000_000, help="abusers' max_fuel")
    parser.add_argument("--wall-ms", type=int, default=10, help="abusers' wall-time limit")
    parser.add_argument(
        "--abusers", type=lambda text: text.split(","), default=list(ABUSERS),
        help=f"comma-separated, from {','.join(ABUSERS)} (default: all)",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="300 requests, 200 abuses")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--keep-log", type=Path, help="copy the node's log here")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.abuse = 300, 200
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
