"""The metering rewriter, on any interpreter: instrumented modules are run on wasmtime
(core's engine) with a Python ``refuel`` import, so these tests need no wasmer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import wasmtime

from caxton.errors import AbiMismatch, ModuleInvalid
from caxton.sandbox import abi
from caxton_sandbox_wasmer import metering

CONTROL_FLOW = """
(module
  (type $binop (func (param i32 i32) (result i32)))
  (import "env" "log" (func $log (param i32 i32)))
  (memory (export "memory") 1 10)
  (table 4 funcref)
  (global $calls (mut i32) (i32.const 0))
  (global $fref funcref (ref.func $mul))
  (elem (i32.const 0) $add $mul)
  (start $boot)
  (func $boot (global.set $calls (i32.const 100)))
  (func $add (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func $mul (param i32 i32) (result i32) (i32.mul (local.get 0) (local.get 1)))
  (func $pick (param $i i32) (result i32)
    (block $c (block $b (block $a
      (br_table $a $b $c (local.get $i)))
      (return (i32.const 10)))
      (return (i32.const 20)))
    (i32.const 30))
  (func $pair (param i32) (result i32 i32)
    (local.get 0) (i32.add (local.get 0) (i32.const 1)))
  (func (export "run") (param $n i32) (result i32)
    (local $i i32) (local $acc i32)
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (loop $outer
      (block $skip
        (br_if $skip (i32.eq (i32.rem_u (local.get $i) (i32.const 3)) (i32.const 0)))
        (local.set $acc
          (i32.add (local.get $acc)
            (if (result i32) (i32.and (local.get $i) (i32.const 1))
              (then (call_indirect (type $binop) (local.get $i) (i32.const 3) (i32.const 1)))
              (else (call_indirect (type $binop) (local.get $i) (i32.const 7) (i32.const 0)))))))
      (local.set $acc
        (i32.add (local.get $acc) (call $pick (i32.rem_u (local.get $i) (i32.const 4)))))
      (call $pair (local.get $i))
      (block $mv (param i32 i32) (result i32) i32.sub)
      (local.set $acc (i32.add (local.get $acc)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $outer (i32.lt_u (local.get $i) (local.get $n))))
    (i32.add (local.get $acc) (global.get $calls)))
  (func (export "spin") (loop $l (br $l)))
  (func (export "count") (param $n i32)
    (loop $l
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br_if $l (i32.gt_s (local.get $n) (i32.const 0)))))
  (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
  (func (export "tgrow") (param i32) (result i32) (table.grow (ref.null func) (local.get 0)))
  (func (export "funcref_ok") (result i32) (ref.is_null (global.get $fref)))
  (func (export "fill") (param $n i32) (memory.fill (i32.const 0) (i32.const 7) (local.get $n)))
)
"""


def wat(source: str) -> bytes:
    return bytes(wasmtime.wat2wasm(source))


class Metered:
    """An instrumented module on wasmtime; ``refuel`` is answered by ``grant``."""

    def __init__(self, wasm: bytes, grant: Callable[[], int] | None = None, **options: Any) -> None:
        self.result = metering.instrument(wasm, **options)
        self.refuels = 0
        self.grant = grant or (lambda: 1_000_000)
        engine = wasmtime.Engine()
        self.store = wasmtime.Store(engine)
        linker = wasmtime.Linker(engine)
        linker.define_func(
            metering.METERING_MODULE,
            metering.REFUEL,
            wasmtime.FuncType([], [wasmtime.ValType.i64()]),
            self._refuel,
        )
        linker.define_func(
            "env",
            "log",
            wasmtime.FuncType([wasmtime.ValType.i32()] * 2, []),
            lambda ptr, length: None,
        )
        module = wasmtime.Module(engine, self.result.wasm)
        self.instance = linker.instantiate(self.store, module)
        self.exports = self.instance.exports(self.store)

    def _refuel(self) -> int:
        self.refuels += 1
        return self.grant()

    def call(self, name: str, *args: Any) -> Any:
        func = self.exports[name]
        assert isinstance(func, wasmtime.Func)
        return func(self.store, *args)

    def global_value(self, name: str) -> Any:
        item = self.exports[name]
        assert isinstance(item, wasmtime.Global)
        return item.value(self.store)

    def set_global(self, name: str, value: int) -> None:
        item = self.exports[name]
        assert isinstance(item, wasmtime.Global)
        item.set_value(self.store, value)


def plain_run(wasm: bytes, n: int) -> int:
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    linker = wasmtime.Linker(engine)
    linker.define_func(
        "env", "log", wasmtime.FuncType([wasmtime.ValType.i32()] * 2, []), lambda p, n: None
    )
    instance = linker.instantiate(store, wasmtime.Module(engine, wasm))
    run = instance.exports(store)["run"]
    assert isinstance(run, wasmtime.Func)
    return int(run(store, n))


def test_example_agents_instrument_into_valid_modules(example_agents: dict[str, bytes]) -> None:
    engine = wasmtime.Engine()
    for name, wasm in example_agents.items():
        result = metering.instrument(wasm)
        wasmtime.Module.validate(engine, result.wasm)  # raises when invalid
        info = abi.parse_module(result.wasm)
        assert info.exports.keys() >= abi.parse_module(wasm).exports.keys(), name
        assert metering.FUEL_GLOBAL in info.exports, name


@pytest.mark.parametrize("n", [0, 1, 5, 50])
def test_control_flow_calls_and_results_are_unchanged(n: int) -> None:
    wasm = wat(CONTROL_FLOW)
    metered = Metered(wasm)
    # The start function is exported, not run at instantiation: run it as the host does.
    assert metered.result.has_start
    metered.call(metering.START_EXPORT)
    assert metered.call("run", n) == plain_run(wasm, n)
    assert metered.call("funcref_ok") == 0


def test_every_loop_iteration_is_charged() -> None:
    metered = Metered(wat(CONTROL_FLOW))

    def used(n: int) -> int:
        metered.set_global(metering.FUEL_GLOBAL, 10**12)
        metered.call("count", n)
        return int(10**12 - metered.global_value(metering.FUEL_GLOBAL))

    base = used(1)
    assert used(1001) - base >= 1000 * 5  # five counted instructions per iteration


def test_bulk_memory_operations_cost_fuel_by_length() -> None:
    metered = Metered(wat(CONTROL_FLOW))

    def used(n: int) -> int:
        metered.set_global(metering.FUEL_GLOBAL, 10**12)
        metered.call("fill", n)
        return int(10**12 - metered.global_value(metering.FUEL_GLOBAL))

    assert used(65536) - used(0) == 65536 >> metering.BULK_BYTES_PER_FUEL_SHIFT


def test_a_charge_larger_than_a_slice_asks_until_it_is_paid() -> None:
    grants = iter([100] * 10 + [0])
    metered = Metered(wat(CONTROL_FLOW), grant=lambda: next(grants))
    metered.call("fill", 64 * 10)  # 10 fuel: one slice is enough
    assert metered.refuels == 1
    with pytest.raises(wasmtime.Trap, match="unreachable"):
        metered.call("fill", 65536)  # 1,024 fuel: more than the nine slices left
    assert metered.refuels == 11


def test_exhausted_fuel_asks_the_host_and_traps_when_refused() -> None:
    grants = iter([50_000, 50_000, 0])
    metered = Metered(wat(CONTROL_FLOW), grant=lambda: next(grants))
    with pytest.raises(wasmtime.Trap, match="unreachable"):
        metered.call("spin")
    assert metered.refuels == 3


def test_memory_growth_stops_at_the_cap() -> None:
    metered = Metered(wat(CONTROL_FLOW))
    metered.set_global(metering.MEMORY_CAP_GLOBAL, 4)
    assert metered.call("grow", 4) == -1
    assert metered.call("grow", 3) == 1
    assert metered.call("grow", 1) == -1
    metered.set_global(metering.MEMORY_CAP_GLOBAL, 10)
    assert metered.call("grow", 6) == 4


def test_table_growth_stops_at_the_cap() -> None:
    metered = Metered(wat(CONTROL_FLOW))
    metered.set_global(metering.TABLE_CAP_GLOBAL, 10)
    assert metered.call("tgrow", 7) == -1
    assert metered.call("tgrow", 6) == 4
    assert metered.result.mutates_tables


def test_declared_memory_maximum_is_capped() -> None:
    result = metering.instrument(wat(CONTROL_FLOW), max_memory_pages=5)
    [memory] = abi.parse_module(result.wasm).memories
    assert (memory.minimum_pages, memory.maximum_pages) == (1, 5)
    with pytest.raises(AbiMismatch, match="initial memory"):
        metering.instrument(wat("(module (memory 8))"), max_memory_pages=5)


def test_mutable_globals_and_memory_are_exported_for_copying() -> None:
    result = metering.instrument(wat(CONTROL_FLOW))
    exports = abi.parse_module(result.wasm).exports
    assert result.mutable_globals == [f"{metering.GLOBAL_EXPORT_PREFIX}0"]
    assert exports[metering.MEMORY_EXPORT].kind == "memory"
    assert exports[result.mutable_globals[0]].kind == "global"


@pytest.mark.parametrize(
    ("source", "error", "wording"),
    [
        ('(module (import "env" "mem" (memory 1)))', AbiMismatch, "imports a memory"),
        ('(module (import "x" "t" (table 1 funcref)))', AbiMismatch, "imports a table"),
        ('(module (func (export "__caxton_fuel")))', AbiMismatch, "reserved"),
        (
            '(module (import "caxton:metering" "refuel" (func (result i64))))',
            AbiMismatch,
            "reserved",
        ),
        ("(module (memory 1 1 shared))", AbiMismatch, "shared"),
    ],
)
def test_modules_the_sandbox_cannot_limit_are_refused(
    source: str, error: type[Exception], wording: str
) -> None:
    with pytest.raises(error, match=wording):
        metering.instrument(wat(source))


def test_unknown_instructions_are_refused() -> None:
    wasm = wat(
        "(module (memory 1 1 shared) (func (drop (i32.atomic.load (i32.const 0)))))"
    ).replace(b"\x03\x01\x01", b"\x01\x01\x01")  # make the memory unshared, keep atomics
    with pytest.raises(ModuleInvalid, match="cannot meter"):
        metering.instrument(wasm)
