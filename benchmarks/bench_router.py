"""Benchmark the in-process router alone (trivial deliver callbacks, no wasm).

    python3 benchmarks/bench_router.py [--messages N] [--output FILE] [--uvloop]
                                       [--tracing RATIO]

Prints one JSON document: for each scenario the throughput (messages/s), the latency
from ``send`` to ``deliver`` (P50/P99/max, µs) and the router's cost per message (µs).
Messages are built before timing starts, so the figures are the router's own work.

Scenarios:
- ``direct``: one sender, one idle agent: ``send_nowait`` delivers inline.
- ``queued``: same with ``direct_delivery=False``: every message goes through the pump
  (bursts of 256, so its latency includes waiting behind the burst).
- ``queued_latency``: one queued message per event-loop iteration (the pump's latency).
- ``ping_pong``: two agents answering each other from inside ``deliver`` (the agent
  host-call path: each hop is queued, then pumped).
- ``fan_in``: 8 senders to one agent, random priorities and 64 conversations.
- ``request_reply``: ``Router.request`` from an external client to an echo agent.
- ``at_least_once``: ``send`` with an in-memory durable outbox (group commit, acks).

``--tracing RATIO`` traces every router as a node with ``observability.enable_tracing``
and ``trace_sample_rate = RATIO`` would (caxton.tracing: a span per message routed), the
finished spans going to an exporter that drops them (so the cost measured is the
spans', not a collector's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from caxton.messaging import Message, Performative, Priority, Router
from caxton.testing.messaging import MemoryOutbox

clock = time.perf_counter_ns


def summarize(name: str, count: int, elapsed_ns: int, latencies_ns: list[int]) -> dict[str, Any]:
    result: dict[str, Any] = {
        "scenario": name,
        "messages": count,
        "seconds": round(elapsed_ns / 1e9, 4),
        "throughput_msgs_per_s": round(count / (elapsed_ns / 1e9)),
        "cost_per_message_us": round(elapsed_ns / count / 1000, 3),
    }
    if latencies_ns:
        ordered = sorted(latencies_ns)
        result["latency_us"] = {
            "p50": round(ordered[len(ordered) // 2] / 1000, 2),
            "p99": round(ordered[int(len(ordered) * 0.99)] / 1000, 2),
            "max": round(ordered[-1] / 1000, 2),
            "mean": round(statistics.fmean(ordered) / 1000, 2),
        }
    return result


#: Set by --tracing: the tracing every router of the run uses.
TRACING: Any = None


def new_router(**options: Any) -> Router:
    router = Router(**options)
    if TRACING is not None:
        router.trace_with(TRACING)
    return router


def build_tracing(ratio: float) -> Any:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    from caxton.config import load_config
    from caxton.tracing import Tracing

    class Dropping(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    config = load_config(
        overrides={
            "observability.enable_tracing": True,
            "observability.trace_sample_rate": ratio,
            "observability.otlp_endpoint": "http://127.0.0.1:4318",
        }
    )
    return Tracing("bench", config, exporter=Dropping())


def stamped_sink(stamps: list[int]) -> Callable[[Message], None]:
    def deliver(message: Message) -> None:
        stamps.append(clock())

    return deliver


async def direct(n: int, **router_options: Any) -> dict[str, Any]:
    router = new_router(node_id="bench", queue_size=n + 1, **router_options)
    received: list[int] = []
    router.register("sink", stamped_sink(received))
    name = "direct" if router_options.get("direct_delivery", True) else "queued"
    return await timed_sends(name, router, n, received)


async def timed_sends(name: str, router: Router, n: int, received: list[int]) -> dict[str, Any]:
    """Send ``n`` prebuilt messages to ``sink``, yielding to the loop every 256."""
    messages = [Message(Performative.INFORM, "source", "sink", i) for i in range(n)]
    sent: list[int] = []
    started = clock()
    for i, message in enumerate(messages):
        sent.append(clock())
        router.send_nowait(message)
        if i % 256 == 255:
            await asyncio.sleep(0)
    await router.drain(30)
    elapsed = clock() - started
    await router.close()
    return summarize(name, n, elapsed, [r - s for s, r in zip(sent, received, strict=True)])


async def queued_latency(n: int) -> dict[str, Any]:
    """One queued message per event-loop iteration: the latency of the pump alone."""
    router = new_router(node_id="bench", direct_delivery=False)
    received: list[int] = []
    router.register("sink", stamped_sink(received))
    messages = [Message(Performative.INFORM, "source", "sink", i) for i in range(n)]
    sent: list[int] = []
    started = clock()
    for message in messages:
        sent.append(clock())
        router.send_nowait(message)
        await asyncio.sleep(0)
    await router.drain(30)
    elapsed = clock() - started
    await router.close()
    result = summarize(
        "queued_latency", n, elapsed, [r - s for s, r in zip(sent, received, strict=True)]
    )
    result["note"] = "throughput here is one event-loop iteration per message"
    return result


async def ping_pong(n: int) -> dict[str, Any]:
    router = new_router(node_id="bench")
    hops: list[int] = []
    done = asyncio.get_running_loop().create_future()
    state = {"left": n, "sent_at": 0}

    def player(me: str, other: str) -> Callable[[Message], None]:
        def deliver(message: Message) -> None:
            now = clock()
            hops.append(now - state["sent_at"])
            state["left"] -= 1
            if state["left"] <= 0:
                if not done.done():
                    done.set_result(None)
                return
            state["sent_at"] = clock()
            router.send_nowait(Message(Performative.INFORM, me, other, state["left"]))

        return deliver

    router.register("ping", player("ping", "pong"))
    router.register("pong", player("pong", "ping"))
    started = clock()
    state["sent_at"] = started
    router.send_nowait(Message(Performative.INFORM, "ping", "pong", n))
    await done
    elapsed = clock() - started
    await router.close()
    result = summarize("ping_pong", n, elapsed, hops)
    result["note"] = "includes building one Message per hop inside deliver"
    return result


async def fan_in(n: int) -> dict[str, Any]:
    router = new_router(node_id="bench", queue_size=n + 1, direct_delivery=False)
    received: list[int] = []
    router.register("sink", stamped_sink(received))
    rng = random.Random(7)
    messages = [
        Message(
            Performative.INFORM,
            f"sender-{i % 8}",
            "sink",
            i,
            conversation_id=f"c{rng.randrange(64)}",
            priority=Priority(rng.randrange(4)),
        )
        for i in range(n)
    ]
    started = clock()
    for i, message in enumerate(messages):
        router.send_nowait(message)
        if i % 1024 == 1023:
            await asyncio.sleep(0)
    await router.drain(30)
    elapsed = clock() - started
    await router.close()
    return summarize("fan_in", n, elapsed, [])


async def request_reply(n: int) -> dict[str, Any]:
    router = new_router(node_id="bench")

    def echo(message: Message) -> None:
        router.send_nowait(message.create_reply(Performative.INFORM, message.content))

    router.register("echo", echo)
    latencies: list[int] = []
    started = clock()
    for i in range(n):
        begin = clock()
        await router.request(Message(Performative.REQUEST, "client", "echo", i), timeout=5)
        latencies.append(clock() - begin)
    elapsed = clock() - started
    await router.close()
    result = summarize("request_reply", n, elapsed, latencies)
    result["note"] = "round trip: temporary endpoint, request, reply, future; builds messages"
    return result


async def at_least_once(n: int) -> dict[str, Any]:
    outbox = MemoryOutbox()
    router = new_router(node_id="bench", queue_size=n + 1, guarantee="at-least-once", outbox=outbox)
    received: list[int] = []
    router.register("sink", stamped_sink(received))
    await router.start()
    result = await timed_sends("at_least_once", router, n, received)
    result["persist_batches"] = len(outbox.persist_calls)
    return result


async def run(n: int) -> list[dict[str, Any]]:
    return [
        await direct(n),
        await direct(n, direct_delivery=False),
        await queued_latency(max(n // 10, 1)),
        await ping_pong(n),
        await fan_in(n),
        await request_reply(max(n // 10, 1)),
        await at_least_once(n),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--output", help="also write the JSON here")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument("--tracing", type=float, help="trace, sampling this ratio (0-1)")
    args = parser.parse_args(argv)
    global TRACING
    if args.tracing is not None:
        TRACING = build_tracing(args.tracing)
    if args.uvloop:
        import uvloop

        uvloop.install()
    results = asyncio.run(run(args.messages))
    by_name = {r["scenario"]: r for r in results}
    router_only = [by_name[n] for n in ("direct", "queued", "ping_pong", "fan_in")]
    report = {
        "benchmark": "router",
        "targets": {
            "router_cost_per_message_under_10us": all(
                r["cost_per_message_us"] < 10 for r in router_only
            ),
            "at_least_100k_msgs_per_s": all(
                r["throughput_msgs_per_s"] >= 100_000 for r in router_only
            ),
        },
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "event_loop": "uvloop" if args.uvloop else "asyncio",
        "tracing": args.tracing,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "results": results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
