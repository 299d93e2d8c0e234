#!/usr/bin/env python3
"""Sandbox benchmark: ``python3 benchmarks/bench_sandbox.py [--sandbox wasmtime]``.

Loads the sandbox driver by name from the ``caxton.sandbox`` entry points (so a plugin's
sandbox, such as ``wasmer``, runs the same benchmark) and measures, on the WAT echo
agent (examples/agents/wat/echo.wat):

* one message through ``handle_message`` (the agent replies): P50/P99 and throughput,
  fuel and epoch deadline re-armed for every message;
* for wasmtime, the same delivery through wasmtime-py's high-level API, for comparison;
* first compile of a new module, and a compile served by the disk cache;
* instantiation from the pool of pre-warmed instances and from the compiled module
  (pre-linked template, no pool): P50/P99;
* RSS per idle instance for N instances, and after each handled one message.

Prints a table and writes the figures as JSON (``--json``, default
benchmarks/results/sandbox-NAME.json). Timings on a shared machine are noisy: compare
runs taken on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pluggy

from caxton.drivers.base import DriverContext
from caxton.drivers.sandbox import ResourceLimits, Sandbox

ROOT = Path(__file__).resolve().parent.parent
ECHO_WAT = ROOT / "examples" / "agents" / "wat" / "echo.wat"
MESSAGE = json.dumps(
    {
        "performative": "request",
        "sender": "bench-client",
        "receiver": "echo",
        "content": {"text": "hello", "n": 42},
        "language": "json",
        "conversation_id": "bench-1",
        "message_id": "m-1",
    }
).encode()


class NullHost:
    """An AgentHostAPI that counts replies and keeps nothing."""

    def __init__(self) -> None:
        self.replies = 0

    def send(self, message: bytes) -> int:
        return 0

    def reply(self, message: bytes) -> int:
        self.replies += 1
        return 0

    def legacy_send(self, recipient: str, content: bytes) -> int:
        return 0

    def log(self, level: int, text: str) -> None:
        pass

    def now_us(self) -> int:
        return time.time_ns() // 1000

    def random_bytes(self, n: int) -> bytes:
        return os.urandom(n)

    def kv_store(self, key: bytes, value: bytes) -> int:
        return 0

    def kv_load(self, key: bytes) -> bytes | None:
        return None

    def kv_delete(self, key: bytes) -> int:
        return -3

    def set_timer(self, delay_ms: int, repeat: bool) -> int:
        return 1

    def cancel_timer(self, timer_id: int) -> int:
        return 0


def load_driver(name: str) -> type[Sandbox]:
    found = importlib.metadata.entry_points(group="caxton.sandbox", name=name)
    if not found:
        installed = sorted(
            ep.name for ep in importlib.metadata.entry_points(group="caxton.sandbox")
        )
        raise SystemExit(f"sandbox '{name}' is not installed (installed: {', '.join(installed)})")
    (entry,) = found
    driver: type[Sandbox] = entry.load()
    return driver


def make(driver: type[Sandbox], data_dir: Path, **config: Any) -> Sandbox:
    context = DriverContext(
        node_id="bench", data_dir=data_dir, hook=pluggy.PluginManager("caxton").hook
    )
    return driver(config, context)


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    return {
        "p50_us": ordered[len(ordered) // 2] / 1000,
        "p99_us": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1000,
        "mean_us": statistics.fmean(ordered) / 1000,
        "samples": len(ordered),
    }


def timed(fn: Callable[[], object], n: int) -> list[int]:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(n):
        start = clock()
        fn()
        samples.append(clock() - start)
    return samples


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def echo_wasm() -> bytes:
    import wasmtime

    return bytes(wasmtime.wat2wasm(ECHO_WAT.read_text(encoding="utf-8")))


# -------------------------------------------------------------------------


async def bench_messages(driver: type[Sandbox], wasm: bytes, n: int, tmp: Path) -> dict[str, Any]:
    sandbox = make(driver, tmp / "messages", agent_pool_size=0)
    await sandbox.start()
    try:
        host = NullHost()
        instance = sandbox.instantiate(
            sandbox.compile(wasm), agent_name="echo", limits=ResourceLimits(), host=host
        )
        handle = instance.handle_message
        for _ in range(2000):  # warm up
            handle(MESSAGE)
        samples = timed(lambda: handle(MESSAGE), n)
        start = time.perf_counter()
        for _ in range(n):
            handle(MESSAGE)
        elapsed = time.perf_counter() - start
        assert host.replies == 2000 + 2 * n
        result = percentiles(samples)
        result["throughput_per_s"] = n / elapsed
        result["fuel_per_message"] = instance.last_fuel_used
        instance.close()
        return result
    finally:
        await sandbox.close()


def bench_high_level_wasmtime(wasm: bytes, n: int) -> dict[str, Any]:
    """The same delivery through wasmtime-py's stock API: Func.__call__, exports(),
    Memory.write/read, a Python host function, fuel and epoch deadline per message."""
    import wasmtime

    config = wasmtime.Config()
    config.consume_fuel = True
    config.epoch_interruption = True
    engine = wasmtime.Engine(config)
    module = wasmtime.Module(engine, wasm)
    store = wasmtime.Store(engine)
    linker = wasmtime.Linker(engine)
    replies = []

    def reply(caller: wasmtime.Caller, ptr: int, length: int) -> int:
        memory = caller["memory"]
        assert isinstance(memory, wasmtime.Memory)
        replies.append(memory.read(caller, ptr, ptr + length))
        return 0

    i32 = wasmtime.ValType.i32()
    linker.define_func(
        "caxton", "reply", wasmtime.FuncType([i32, i32], [i32]), reply, access_caller=True
    )
    store.set_fuel(10_000_000)
    store.set_epoch_deadline(1_000_000)
    instance = linker.instantiate(store, module)

    def deliver() -> None:
        store.set_fuel(10_000_000)
        store.set_epoch_deadline(1_000_000)
        exports = instance.exports(store)
        alloc, handle, dealloc, memory = (
            exports["alloc"],
            exports["handle_message"],
            exports["dealloc"],
            exports["memory"],
        )
        ptr = alloc(store, len(MESSAGE))  # type: ignore[operator]
        memory.write(store, MESSAGE, ptr)  # type: ignore[union-attr]
        handle(store, ptr, len(MESSAGE))  # type: ignore[operator]
        dealloc(store, ptr, len(MESSAGE))  # type: ignore[operator]
        store.get_fuel()

    for _ in range(500):
        deliver()
    samples = timed(deliver, n)
    start = time.perf_counter()
    for _ in range(n):
        deliver()
    result = percentiles(samples)
    result["throughput_per_s"] = n / (time.perf_counter() - start)
    assert replies[-1].startswith(b'{"performative":"inform"')
    return result


async def bench_compile(driver: type[Sandbox], wasm: bytes, tmp: Path) -> dict[str, Any]:
    # A module the cache has never seen: the echo agent plus a unique custom section.
    unique = wasm + b"\x00\x0b\x05bench" + os.urandom(5)
    first = make(driver, tmp / "compile")
    start = time.perf_counter()
    first.compile(unique)
    first_ms = (time.perf_counter() - start) * 1000
    await first.close()
    second = make(driver, tmp / "compile")  # a new process would see the same disk cache
    start = time.perf_counter()
    second.compile(unique)
    cached_ms = (time.perf_counter() - start) * 1000
    await second.close()
    return {"first_compile_ms": first_ms, "disk_cache_compile_ms": cached_ms}


async def bench_instantiate(
    driver: type[Sandbox], wasm: bytes, n: int, tmp: Path, *, pooled: bool
) -> dict[str, Any]:
    """Instantiate ``n`` times back to back. With ``pooled``, the pool is first filled with
    ``n`` instances so every call is a pool hit (no refill competes for the GIL); a
    driver shows its pool through an optional ``pooled(module) -> int`` method."""
    sandbox = make(driver, tmp / f"inst-{pooled}", agent_pool_size=n if pooled else 0)
    await sandbox.start()
    try:
        module = sandbox.compile(wasm)
        if pooled:
            count = getattr(sandbox, "pooled", None)
            if count is None:
                await asyncio.sleep(2)  # no way to look: give the driver time to fill
            for _ in range(1200):  # up to a minute
                if count is None or count(module) >= n:
                    break
                await asyncio.sleep(0.05)
        host = NullHost()
        limits = ResourceLimits()
        samples = []
        instances = []
        for _ in range(n):
            start = time.perf_counter_ns()
            instance = sandbox.instantiate(module, agent_name="e", limits=limits, host=host)
            samples.append(time.perf_counter_ns() - start)
            instances.append(instance)
        for instance in instances:
            instance.close()
        result = percentiles(samples)
        stats = getattr(getattr(sandbox, "runtime", None), "stats", None)
        if stats is not None:
            result["pool_hits"] = stats["pool_hit"]
            result["fresh_instantiations"] = stats["instantiate"]
        return result
    finally:
        await sandbox.close()


async def bench_rss(driver: type[Sandbox], wasm: bytes, count: int, tmp: Path) -> dict[str, Any]:
    sandbox = make(driver, tmp / "rss", agent_pool_size=0)
    await sandbox.start()
    try:
        module = sandbox.compile(wasm)
        host = NullHost()
        limits = ResourceLimits()
        keep = [
            sandbox.instantiate(module, agent_name="w", limits=limits, host=host) for _ in range(10)
        ]
        gc.collect()
        before = rss_bytes()
        start = time.perf_counter()
        instances = [
            sandbox.instantiate(module, agent_name=f"a{i}", limits=limits, host=host)
            for i in range(count)
        ]
        deploy_s = time.perf_counter() - start
        gc.collect()
        idle = rss_bytes()
        for instance in instances:
            instance.handle_message(MESSAGE)
        gc.collect()
        used = rss_bytes()
        for instance in (*instances, *keep):
            instance.close()
        return {
            "instances": count,
            "instantiate_all_s": deploy_s,
            "rss_per_idle_instance_kib": (idle - before) / count / 1024,
            "rss_per_instance_after_one_message_kib": (used - before) / count / 1024,
        }
    finally:
        await sandbox.close()


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Caxton sandbox benchmark")
    parser.add_argument(
        "--sandbox",
        default="wasmtime",
        help="driver name(s) (caxton.sandbox), comma-separated to compare them in one run",
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--instantiations", type=int, default=1_000)
    parser.add_argument("--instances", type=int, default=1_000, help="for RSS per instance")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    names = [name.strip() for name in args.sandbox.split(",") if name.strip()]
    runs = {name: await bench_sandbox(name, args) for name in names}
    for results in runs.values():
        report(results)
        print()
    if args.json is not None:
        outputs = {args.json: runs[names[0]] if len(names) == 1 else runs}
    else:
        results_dir = ROOT / "benchmarks" / "results"
        outputs = {results_dir / f"sandbox-{name}.json": runs[name] for name in names}
    for out, data in outputs.items():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        print(f"written: {out}")
    return 0


async def bench_sandbox(name: str, args: argparse.Namespace) -> dict[str, Any]:
    driver = load_driver(name)
    wasm = echo_wasm()
    results: dict[str, Any] = {
        "sandbox": name,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "taken_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        results["wasmtime_py"] = importlib.metadata.version("wasmtime")
    except importlib.metadata.PackageNotFoundError:
        pass
    with tempfile.TemporaryDirectory(prefix="caxton-bench-") as tmp_name:
        tmp = Path(tmp_name)
        results["message"] = await bench_messages(driver, wasm, args.messages, tmp)
        if name == "wasmtime":
            results["message_high_level_api"] = bench_high_level_wasmtime(
                wasm, max(2000, args.messages // 4)
            )
        results["compile"] = await bench_compile(driver, wasm, tmp)
        results["instantiate_pool"] = await bench_instantiate(
            driver, wasm, args.instantiations, tmp, pooled=True
        )
        results["instantiate_no_pool"] = await bench_instantiate(
            driver, wasm, args.instantiations, tmp, pooled=False
        )
        results["memory"] = await bench_rss(driver, wasm, args.instances, tmp)
    return results


def report(r: dict[str, Any]) -> None:
    def row(label: str, data: dict[str, Any], extra: str = "") -> None:
        print(f"{label:44} P50 {data['p50_us']:9.1f} us   P99 {data['p99_us']:9.1f} us{extra}")

    print(f"sandbox={r['sandbox']}  python {r['python']}  {r['machine']}  cpus={r['cpus']}")
    m = r["message"]
    row(
        "message, handle_message + reply (echo)",
        m,
        f"   {m['throughput_per_s']:,.0f} msg/s  fuel {m['fuel_per_message']}",
    )
    if "message_high_level_api" in r:
        h = r["message_high_level_api"]
        row("message via wasmtime-py high-level API", h, f"   {h['throughput_per_s']:,.0f} msg/s")
    c = r["compile"]
    print(f"{'first compile of a new module':44} {c['first_compile_ms']:9.2f} ms")
    print(f"{'compile served by the disk cache':44} {c['disk_cache_compile_ms']:9.2f} ms")
    row(
        "instantiate from the pool",
        r["instantiate_pool"],
        f"   (pool hits {r['instantiate_pool'].get('pool_hits', '?')})",
    )
    row("instantiate from the compiled module", r["instantiate_no_pool"])
    mem = r["memory"]
    print(
        f"{'RSS per idle instance':44} {mem['rss_per_idle_instance_kib']:9.1f} KiB "
        f"({mem['instances']} instances in {mem['instantiate_all_s']:.2f} s)"
    )
    print(
        f"{'RSS per instance after one message':44} "
        f"{mem['rss_per_instance_after_one_message_kib']:9.1f} KiB"
    )


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
