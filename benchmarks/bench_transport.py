#!/usr/bin/env python3
"""Transport benchmark: ``python3 benchmarks/bench_transport.py [--quick] [--json PATH]``.

Both transports side by side, each between two processes on loopback with mutual TLS
(the production mode; uvloop in both processes when installed):

* **rtt**: sequential request/response of a 64-byte payload: P50/P99 (one connection,
  one request in flight);
* **throughput**: routed messages (MESSAGE frames of 128 bytes) per second, with the
  transport's batching (frames queued in one loop turn share an envelope and a write)
  and without it (``batching=False``: one envelope and one write per frame); the
  receiver confirms it handled them all before the clock stops;
* **pipelined requests**: request/response pairs per second with 64 in flight;
* **connect**: time from nothing to a usable connection (dial, TLS 1.3 with client
  certificates, HELLO with identity check): P50.

Targets (docs/performance.md): TCP P50 <= 0.5 ms, QUIC P50 <= 1 ms, both P99 <= 5 ms;
TCP >= 50,000 msgs/s, QUIC >= 20,000 msgs/s. Prints JSON; ``--json`` also writes it to a
file (default benchmarks/results/transport.json). Figures on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TRANSPORTS = ("tcp", "quic")
TARGETS = {
    "tcp": {"rtt_p50_ms": 0.5, "rtt_p99_ms": 5.0, "messages_per_s": 50_000},
    "quic": {"rtt_p50_ms": 1.0, "rtt_p99_ms": 5.0, "messages_per_s": 20_000},
}


def install_uvloop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return f"uvloop {uvloop.__version__}"


def transport_class(name: str) -> Any:
    (ep,) = [e for e in entry_points(group="caxton.transport") if e.name == name]
    return ep.load()


#: ``--quic-packet-size``: aioquic's max_datagram_size for both ends (default 1200).
QUIC_PACKET_SIZE = 1200


def build(name: str, node_id: str, pki: Path, **overrides: Any) -> Any:
    from caxton.drivers import DriverContext
    from caxton.security.tls import TlsFiles
    from caxton.testing.conformance import driver_config
    from caxton.transport import TransportSettings

    cls = transport_class(name)
    settings = TransportSettings(node_id, tls=TlsFiles.from_dir(pki / node_id))
    settings = replace(settings, **overrides)
    context = DriverContext(node_id=node_id, data_dir=Path("."), hook=None)  # type: ignore[arg-type]
    config = {"max_datagram_size": QUIC_PACKET_SIZE} if name == "quic" else {}
    return cls(driver_config(cls, config), context, settings=settings)


# -------------------------------------------------------------------------
# The server process
# -------------------------------------------------------------------------


def serve(name: str, pki: Path) -> None:
    """Echo requests; count messages; answer ``count`` with how many were handled."""
    install_uvloop()
    from caxton.drivers import Frame

    async def main() -> None:
        transport = build(name, "bench-server", pki)
        handled = 0

        async def on_frame(frame: Frame) -> bytes | None:
            nonlocal handled
            if not frame.request_id:
                handled += 1
                return None
            if frame.payload == b"count":
                return str(handled).encode()
            if frame.payload == b"reset":
                handled = 0
                return b"0"
            return frame.payload

        await transport.start()
        address = await transport.listen(("127.0.0.1", 0), on_frame, lambda p, s: None)
        print(json.dumps({"address": list(address)}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await transport.close()

    asyncio.run(main())


# -------------------------------------------------------------------------
# The client (this process)
# -------------------------------------------------------------------------


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def measure_rtt(transport: Any, peer: Any, count: int) -> dict[str, float]:
    from caxton.drivers import FrameKind

    payload = b"p" * 64
    for _ in range(200):  # warm up
        await transport.request(peer, FrameKind.REQUEST, payload, 5)
    samples = []
    clock = time.perf_counter
    for _ in range(count):
        start = clock()
        await transport.request(peer, FrameKind.REQUEST, payload, 5)
        samples.append((clock() - start) * 1000)
    return {
        "rtt_p50_ms": round(percentile(samples, 50), 4),
        "rtt_p99_ms": round(percentile(samples, 99), 4),
        "rtt_mean_ms": round(statistics.fmean(samples), 4),
        "samples": count,
    }


async def measure_messages(transport: Any, peer: Any, count: int) -> float:
    from caxton.drivers import FrameKind

    await transport.request(peer, FrameKind.REQUEST, b"reset", 10)
    payload = b"m" * 128
    send = transport.send
    start = time.perf_counter()
    for _ in range(count):
        await send(peer, FrameKind.MESSAGE, payload)
    handled = await transport.request(peer, FrameKind.REQUEST, b"count", 60)
    elapsed = time.perf_counter() - start
    assert int(handled) == count, f"server handled {handled!r} of {count}"
    return round(count / elapsed)


async def measure_pipelined(transport: Any, peer: Any, count: int, depth: int) -> float:
    from caxton.drivers import FrameKind

    payload = b"q" * 64
    per_worker = count // depth

    async def worker() -> None:
        for _ in range(per_worker):
            await transport.request(peer, FrameKind.REQUEST, payload, 30)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(depth)))
    return round(per_worker * depth / (time.perf_counter() - start))


async def measure_connect(name: str, pki: Path, peer: Any, count: int) -> dict[str, float]:
    samples = []
    for _ in range(count):
        client = build(name, "bench-client", pki)
        await client.start()
        start = time.perf_counter()
        await client.connection(peer)
        samples.append((time.perf_counter() - start) * 1000)
        await client.close()
    return {
        "connect_p50_ms": round(percentile(samples, 50), 3),
        "connect_p99_ms": round(percentile(samples, 99), 3),
    }


async def bench_transport(name: str, pki: Path, peer: Any, quick: bool) -> dict[str, Any]:
    scale = 0.2 if quick else 1.0
    result: dict[str, Any] = {}
    client = build(name, "bench-client", pki)
    await client.start()
    result.update(await measure_rtt(client, peer, int(5000 * scale)))
    result["messages_per_s"] = await measure_messages(client, peer, int(200_000 * scale))
    result["pipelined_requests_per_s"] = await measure_pipelined(
        client, peer, int(100_000 * scale), 64
    )
    await client.close()
    unbatched = build(name, "bench-client", pki, batching=False)
    await unbatched.start()
    result["messages_per_s_unbatched"] = await measure_messages(
        unbatched, peer, int(50_000 * scale)
    )
    await unbatched.close()
    result.update(await measure_connect(name, pki, peer, int(50 * scale) or 5))
    targets = TARGETS[name]
    result["meets_targets"] = {
        "rtt_p50": result["rtt_p50_ms"] <= targets["rtt_p50_ms"],
        "rtt_p99": result["rtt_p99_ms"] <= targets["rtt_p99_ms"],
        "messages_per_s": result["messages_per_s"] >= targets["messages_per_s"],
    }
    return result


def make_pki(directory: Path) -> None:
    from caxton.security.pki import init_ca, issue_node_cert

    init_ca(directory / "ca")
    for node in ("bench-server", "bench-client"):
        issue_node_cert(directory / "ca", node, directory / node, hosts=["127.0.0.1"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (smoke test)")
    parser.add_argument("--json", nargs="?", const=str(ROOT / "benchmarks/results/transport.json"))
    parser.add_argument("--only", choices=TRANSPORTS, action="append")
    parser.add_argument(
        "--quic-packet-size",
        type=int,
        default=1200,
        help="transport.quic.max_datagram_size on both ends (1200: safe on any path)",
    )
    parser.add_argument("--serve", choices=TRANSPORTS, help=argparse.SUPPRESS)
    parser.add_argument("--pki", help=argparse.SUPPRESS)
    args = parser.parse_args()
    global QUIC_PACKET_SIZE
    QUIC_PACKET_SIZE = args.quic_packet_size
    if args.serve:
        serve(args.serve, Path(args.pki))
        return

    loop_name = install_uvloop()
    report: dict[str, Any] = {
        "benchmark": "transport",
        "python": platform.python_version(),
        "loop": loop_name,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "mode": "mutual TLS 1.3, two processes on 127.0.0.1",
        "quic_packet_size": args.quic_packet_size,
        "transports": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        pki = Path(tmp)
        make_pki(pki)
        for name in args.only or TRANSPORTS:
            server = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--serve",
                    name,
                    "--pki",
                    str(pki),
                    "--quic-packet-size",
                    str(args.quic_packet_size),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert server.stdout is not None
                peer = tuple(json.loads(server.stdout.readline())["address"])
                report["transports"][name] = asyncio.run(
                    bench_transport(name, pki, peer, args.quick)
                )
            finally:
                assert server.stdin is not None
                server.stdin.close()
                try:
                    server.wait(10)
                except subprocess.TimeoutExpired:
                    server.kill()
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
