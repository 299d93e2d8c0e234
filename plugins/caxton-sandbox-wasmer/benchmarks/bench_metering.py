#!/usr/bin/env python3
"""What the wasmer sandbox's compiled-in limits cost (CPython 3.10, wasmer 1.1).

``python3.10 plugins/caxton-sandbox-wasmer/benchmarks/bench_metering.py``

* compute: a tight arithmetic loop, uninstrumented on wasmer vs instrumented (fuel
  charged per segment, refuel host call per slice): ns per iteration, overhead, fuel
  burnt per second and so how long one fuel slice lasts (the wall-clock check interval);
* message: the echo agent (examples/agents/wat/echo.wat) through wasmer-python's plain
  API (alloc, memory write, handle_message, dealloc, a Python ``caxton.reply``) on the
  uninstrumented module vs through :class:`WasmerSandbox` (metering, limits, fuel
  accounting): P50/P99;
* timeout: how far past ``max_execution_time_ms`` a runaway loop is stopped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pluggy
import wasmer
from wasmer_compiler_cranelift import Compiler

from caxton.drivers.base import DriverContext
from caxton.drivers.sandbox import ResourceLimits
from caxton.errors import ExecutionFailed
from caxton_sandbox_wasmer import metering
from caxton_sandbox_wasmer.driver import WasmerSandbox

ROOT = Path(__file__).resolve().parents[3]
ECHO_WAT = ROOT / "examples" / "agents" / "wat" / "echo.wat"
LOOP_WAT = ROOT / "examples" / "agents" / "wat" / "infinite_loop.wat"
MESSAGE = json.dumps(
    {"performative": "request", "sender": "bench", "receiver": "echo", "content": {"n": 42}}
).encode()

COMPUTE = """
(module
  (func (export "work") (param $n i32) (result i32)
    (local $acc i32)
    (loop $l
      (local.set $acc (i32.add (i32.mul (local.get $acc) (i32.const 31)) (local.get $n)))
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br_if $l (local.get $n)))
    (local.get $acc))
  (func (export "branchy") (param $n i32) (result i32)
    (local $acc i32)
    (loop $l
      (if (i32.and (local.get $n) (i32.const 1))
        (then (local.set $acc (i32.add (local.get $acc) (i32.const 3))))
        (else (local.set $acc (i32.xor (local.get $acc) (local.get $n)))))
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br_if $l (local.get $n)))
    (local.get $acc)))
"""


def percentiles(samples: list[int]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_us": ordered[len(ordered) // 2] / 1000,
        "p99_us": ordered[int(len(ordered) * 0.99)] / 1000,
        "mean_us": statistics.fmean(ordered) / 1000,
    }


def bench_compute(iterations: int, export: str) -> dict[str, Any]:
    store = wasmer.Store(wasmer.engine.Universal(Compiler))
    raw = wasmer.wat2wasm(COMPUTE)
    plain = getattr(wasmer.Instance(wasmer.Module(store, raw)).exports, export)
    instrumented = metering.instrument(raw)
    slices = [0]
    slice_size = 1_000_000

    def refuel() -> int:
        slices[0] += 1
        return slice_size

    refuel_type = wasmer.FunctionType([], [wasmer.Type.I64])
    imports = wasmer.ImportObject()
    imports.register(
        metering.METERING_MODULE, {metering.REFUEL: wasmer.Function(store, refuel, refuel_type)}
    )
    exports = wasmer.Instance(wasmer.Module(store, instrumented.wasm), imports).exports
    metered = getattr(exports, export)
    fuel = getattr(exports, metering.FUEL_GLOBAL)

    def best_of(fn: Any, runs: int = 5) -> float:
        best = float("inf")
        for _ in range(runs):
            start = time.perf_counter()
            fn(iterations)
            best = min(best, time.perf_counter() - start)
        return best

    assert plain(1000) == metered(1000)
    plain_s = best_of(plain)
    fuel.value = 0
    slices[0] = 0
    metered(iterations)
    burnt = slices[0] * slice_size - fuel.value
    metered_s = best_of(metered)
    fuel_per_s = burnt / metered_s
    return {
        "iterations": iterations,
        "plain_ns_per_iteration": plain_s / iterations * 1e9,
        "metered_ns_per_iteration": metered_s / iterations * 1e9,
        "overhead_percent": (metered_s / plain_s - 1) * 100,
        "fuel_per_iteration": burnt / iterations,
        "fuel_per_second": fuel_per_s,
        "slice_ms": slice_size / fuel_per_s * 1000,
    }


def bench_plain_message(n: int) -> dict[str, Any]:
    """The echo agent on wasmer-python's own API, uninstrumented: the raw call path."""
    store = wasmer.Store(wasmer.engine.Universal(Compiler))
    module = wasmer.Module(store, wasmer.wat2wasm(ECHO_WAT.read_text()))
    memory_box: list[Any] = []
    replies = [0]

    def reply(ptr: int, length: int) -> int:
        bytes(memory_box[0][ptr : ptr + length])
        replies[0] += 1
        return 0

    i32 = wasmer.Type.I32
    imports = wasmer.ImportObject()
    imports.register(
        "caxton", {"reply": wasmer.Function(store, reply, wasmer.FunctionType([i32, i32], [i32]))}
    )
    exports = wasmer.Instance(module, imports).exports
    alloc, handle, dealloc, memory = (
        exports.alloc,
        exports.handle_message,
        exports.dealloc,
        exports.memory,
    )
    memory_box.append(memory.uint8_view())

    def deliver() -> None:
        ptr = alloc(len(MESSAGE))
        view = memory.uint8_view(ptr)
        view[0 : len(MESSAGE)] = MESSAGE
        memory_box[0] = memory.uint8_view()
        handle(ptr, len(MESSAGE))
        dealloc(ptr, len(MESSAGE))

    return timed(deliver, n)


def timed(fn: Any, n: int) -> dict[str, Any]:
    for _ in range(1000):
        fn()
    clock = time.perf_counter_ns
    samples = []
    for _ in range(n):
        start = clock()
        fn()
        samples.append(clock() - start)
    return percentiles(samples)


def make_sandbox(data_dir: Path) -> WasmerSandbox:
    context = DriverContext(
        node_id="bench", data_dir=data_dir, hook=pluggy.PluginManager("caxton").hook
    )
    return WasmerSandbox({"agent_pool_size": 0}, context)


class NullHost:
    def __getattr__(self, name: str) -> Any:
        return lambda *args: 0


def bench_sandbox_message(n: int, tmp: Path) -> dict[str, Any]:
    sandbox = make_sandbox(tmp)
    module = sandbox.compile(wasmer.wat2wasm(ECHO_WAT.read_text()))
    instance = sandbox.instantiate(
        module,
        agent_name="echo",
        limits=ResourceLimits(),
        host=NullHost(),
    )
    return timed(lambda: instance.handle_message(MESSAGE), n)


def bench_timeout(limit_ms: int, runs: int, tmp: Path) -> dict[str, Any]:
    sandbox = make_sandbox(tmp)
    module = sandbox.compile(wasmer.wat2wasm(LOOP_WAT.read_text()))
    overshoot = []
    for _ in range(runs):
        instance = sandbox.instantiate(
            module,
            agent_name="loop",
            limits=ResourceLimits(max_fuel=10**15, max_execution_time_ms=limit_ms),
            host=NullHost(),
        )
        start = time.perf_counter()
        try:
            instance.handle_message(MESSAGE)
        except ExecutionFailed as exc:
            if exc.reason != "timeout":
                raise
        overshoot.append((time.perf_counter() - start) * 1000 - limit_ms)
        instance.close()
    return {
        "limit_ms": limit_ms,
        "overshoot_ms_median": statistics.median(overshoot),
        "overshoot_ms_max": max(overshoot),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--iterations", type=int, default=20_000_000)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        results: dict[str, Any] = {
            "python": sys.version.split()[0],
            "taken_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "compute": bench_compute(args.iterations, "work"),
            "compute_branchy": bench_compute(args.iterations, "branchy"),
            "message_plain_wasmer_api": bench_plain_message(args.messages),
            "message_wasmer_sandbox": bench_sandbox_message(args.messages, tmp),
            "timeout": bench_timeout(100, 10, tmp),
        }
    for key in ("compute", "compute_branchy"):
        c = results[key]
        print(
            f"{key}: plain {c['plain_ns_per_iteration']:.2f} ns/iter, metered "
            f"{c['metered_ns_per_iteration']:.2f} ns/iter ({c['overhead_percent']:+.0f}%), "
            f"{c['fuel_per_iteration']:.0f} fuel/iter, {c['fuel_per_second'] / 1e6:.0f}M "
            f"fuel/s, one slice = {c['slice_ms']:.2f} ms"
        )
    for key, label in (
        ("message_plain_wasmer_api", "echo via wasmer-python API, uninstrumented"),
        ("message_wasmer_sandbox", "echo via WasmerSandbox (metered, limits)"),
    ):
        m = results[key]
        print(f"{label:44} P50 {m['p50_us']:6.1f} us  P99 {m['p99_us']:6.1f} us")
    t = results["timeout"]
    print(
        f"timeout {t['limit_ms']} ms: stopped {t['overshoot_ms_median']:.2f} ms late "
        f"(median), {t['overshoot_ms_max']:.2f} ms (max)"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
