"""What is particular to the wasmer sandbox (CPython 3.10): instances moving between
threads, the disk cache, the pool, start functions under limits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import wasmtime
from conftest import make_wasmer_sandbox, needs_wasmer

from caxton.drivers.sandbox import HostCall, HostFunction, ResourceLimits, WasiCapabilities
from caxton.errors import ConfigError, ExecutionFailed
from caxton.testing import NodeFactory
from caxton.testing.sandbox import RecordingAgentHost, call_with_watchdog
from caxton_sandbox_wasmer.driver import WasmerSandbox

pytestmark = needs_wasmer

#: Keeps a count in a global and another in memory; replies "<global>,<memory>".
STATEFUL = """
(module
  (import "caxton" "reply" (func $reply (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $n (mut i32) (i32.const 0))
  (func (export "alloc") (param i32) (result i32) (i32.const 4096))
  (func (export "handle_message") (param i32 i32) (result i32)
    (global.set $n (i32.add (global.get $n) (i32.const 1)))
    (i32.store (i32.const 64) (i32.add (i32.load (i32.const 64)) (i32.const 2)))
    (i32.store8 (i32.const 0) (i32.add (i32.const 48) (global.get $n)))
    (i32.store8 (i32.const 1) (i32.const 44))
    (i32.store8 (i32.const 2) (i32.add (i32.const 48) (i32.load (i32.const 64))))
    (call $reply (i32.const 0) (i32.const 3)))
)
"""

SPINNING_START = """
(module
  (memory (export "memory") 1)
  (start $spin)
  (func $spin (loop $l (br $l)))
)
"""

CALLS_PLUGIN = """
(module
  (import "demo" "boom" (func $boom (result i32)))
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle_message") (param i32 i32) (result i32) (call $boom))
)
"""


#: A WASI agent probing what read-only preopens, stdin and poll_oneoff allow. Commands:
#: U unlink data.txt, D mkdir newdir, O open data.txt and write to it, Q open and read it
#: (returns the bytes read), I read stdin (bytes read), S poll_oneoff (errno).
WASI_LIMITS = """
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_unlink_file"
    (func $unlink (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_create_directory"
    (func $mkdir (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 96) "data.txt")
  (data (i32.const 128) "newdir")
  (func (export "alloc") (param i32) (result i32) (i32.const 2048))
  (func $open_data (result i32)
    (drop (call $open (i32.const 3) (i32.const 0) (i32.const 96) (i32.const 8) (i32.const 0)
                      (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 32)))
    (i32.load (i32.const 32)))
  (func (export "handle_message") (param $p i32) (param $n i32) (result i32)
    (local $cmd i32)
    (local.set $cmd (i32.load8_u (local.get $p)))
    (i32.store (i32.const 0) (i32.const 512))
    (i32.store (i32.const 4) (i32.const 64))
    (i32.store (i32.const 16) (i32.const 99))
    (if (i32.eq (local.get $cmd) (i32.const 85)) ;; U
      (then (return (call $unlink (i32.const 3) (i32.const 96) (i32.const 8)))))
    (if (i32.eq (local.get $cmd) (i32.const 68)) ;; D
      (then (return (call $mkdir (i32.const 3) (i32.const 128) (i32.const 6)))))
    (if (i32.eq (local.get $cmd) (i32.const 79)) ;; O
      (then (return (call $write (call $open_data) (i32.const 0) (i32.const 1) (i32.const 16)))))
    (if (i32.eq (local.get $cmd) (i32.const 81)) ;; Q
      (then
        (drop (call $read (call $open_data) (i32.const 0) (i32.const 1) (i32.const 16)))
        (return (i32.load (i32.const 16)))))
    (if (i32.eq (local.get $cmd) (i32.const 73)) ;; I
      (then
        (drop (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 16)))
        (return (i32.load (i32.const 16)))))
    (call $poll (i32.const 600) (i32.const 700) (i32.const 1) (i32.const 16)))
)
"""


def wat(source: str) -> bytes:
    return bytes(wasmtime.wat2wasm(source))


def test_an_instance_moves_to_another_thread_with_its_state(
    wasmer_sandbox: WasmerSandbox,
) -> None:
    host = RecordingAgentHost()
    instance = wasmer_sandbox.instantiate(
        wasmer_sandbox.compile(wat(STATEFUL)),
        agent_name="stateful",
        limits=ResourceLimits(),
        host=host,
    )
    instance.handle_message(b"x")
    call_with_watchdog(lambda: instance.handle_message(b"x"))
    call_with_watchdog(lambda: instance.handle_message(b"x"))
    instance.handle_message(b"x")
    assert host.replies == [b"1,2", b"2,4", b"3,6", b"4,8"]
    assert wasmer_sandbox.runtime.stats["moved"] == 3
    instance.close()


def test_a_wasi_instance_refuses_another_thread_clearly(
    wasmer_sandbox: WasmerSandbox, example_agents: dict[str, bytes]
) -> None:
    instance = wasmer_sandbox.instantiate(
        wasmer_sandbox.compile(example_agents["echo"]),
        agent_name="wasi-echo",
        limits=ResourceLimits(),
        host=RecordingAgentHost(),
        capabilities=WasiCapabilities(enabled=True),
    )
    with pytest.raises(ExecutionFailed, match="thread") as failure:
        call_with_watchdog(lambda: instance.handle_message(b'{"content": 1}'))
    assert failure.value.reason == "abi"
    assert instance.handle_message(b'{"content": 1}') == 0  # still fine on its own thread
    instance.close()


async def test_compiled_modules_are_cached_on_disk(
    tmp_path: Path, example_agents: dict[str, bytes]
) -> None:
    first = make_wasmer_sandbox(tmp_path)
    first.compile(example_agents["echo_c"])
    assert first.runtime.stats["compile"] == 1
    second = make_wasmer_sandbox(tmp_path)
    module = second.compile(example_agents["echo_c"])
    assert second.runtime.stats["compile"] == 0
    assert second.runtime.stats["compile_disk_hit"] == 1
    host = RecordingAgentHost()
    instance = second.instantiate(module, agent_name="echo", limits=ResourceLimits(), host=host)
    assert instance.handle_message(b'{"content": "cached"}') == 0
    assert host.replies_json() == [{"performative": "inform", "content": "cached"}]
    # A damaged cache file is ignored and the module compiled again.
    [cached] = (tmp_path / "cache" / "wasmer").glob("*.wasmer")
    cached.write_bytes(cached.read_bytes()[:100])
    third = make_wasmer_sandbox(tmp_path)
    third.compile(example_agents["echo_c"])
    assert third.runtime.stats["compile"] == 1


async def test_the_pool_is_filled_on_the_event_loop_thread(
    tmp_path: Path, example_agents: dict[str, bytes]
) -> None:
    sandbox = make_wasmer_sandbox(tmp_path, agent_pool_size=3)
    await sandbox.start()
    module = sandbox.compile(example_agents["echo"])
    for _ in range(100):
        if sandbox.pooled(module) == 3:
            break
        await asyncio.sleep(0.01)
    assert sandbox.pooled(module) == 3
    host = RecordingAgentHost()
    instance = sandbox.instantiate(module, agent_name="e", limits=ResourceLimits(), host=host)
    assert sandbox.runtime.stats["pool_hit"] == 1
    assert instance.handle_message(b'{"content": 7}') == 0
    assert host.replies_json() == [{"performative": "inform", "content": 7}]
    await sandbox.close()


def test_a_start_function_runs_under_the_limits(wasmer_sandbox: WasmerSandbox) -> None:
    module = wasmer_sandbox.compile(wat(SPINNING_START))
    with pytest.raises(ExecutionFailed) as failure:
        wasmer_sandbox.instantiate(
            module,
            agent_name="spinner",
            limits=ResourceLimits(max_fuel=100_000),
            host=RecordingAgentHost(),
        )
    assert failure.value.reason == "fuel"


def test_an_initial_table_over_the_limit_is_refused(wasmer_sandbox: WasmerSandbox) -> None:
    module = wasmer_sandbox.compile(wat("(module (table 500 funcref))"))
    with pytest.raises(ExecutionFailed, match="max_table_elements"):
        wasmer_sandbox.instantiate(
            module,
            agent_name="tables",
            limits=ResourceLimits(max_table_elements=100),
            host=RecordingAgentHost(),
        )


def test_a_failing_plugin_host_function_is_a_trap(wasmer_sandbox: WasmerSandbox) -> None:
    def boom(call: HostCall) -> int:
        raise RuntimeError("no luck")

    instance = wasmer_sandbox.instantiate(
        wasmer_sandbox.compile(wat(CALLS_PLUGIN)),
        agent_name="plugged",
        limits=ResourceLimits(),
        host=RecordingAgentHost(),
        extra_functions=(HostFunction("demo", "boom", (), ("i32",), boom),),
    )
    with pytest.raises(ExecutionFailed, match=r"host function demo\.boom failed: no luck") as e:
        instance.handle_message(b"x")
    assert e.value.reason == "trap"


def test_fuel_used_is_the_same_for_the_same_work(
    wasmer_sandbox: WasmerSandbox, example_agents: dict[str, bytes]
) -> None:
    instance = wasmer_sandbox.instantiate(
        wasmer_sandbox.compile(example_agents["echo"]),
        agent_name="echo",
        limits=ResourceLimits(),
        host=RecordingAgentHost(),
    )
    used = []
    for _ in range(3):
        instance.handle_message(b'{"content": "same"}')
        used.append(instance.last_fuel_used)
    assert used[0] > 0
    assert used == [used[0]] * 3
    assert instance.total_fuel_used == sum(used)


def test_wasi_preopens_are_read_only_stdin_is_empty_and_sleeping_is_refused(
    wasmer_sandbox: WasmerSandbox, tmp_path: Path
) -> None:
    (tmp_path / "data.txt").write_text("readable")
    instance = wasmer_sandbox.instantiate(
        wasmer_sandbox.compile(wat(WASI_LIMITS)),
        agent_name="wasi-limits",
        limits=ResourceLimits(),
        host=RecordingAgentHost(),
        capabilities=WasiCapabilities(enabled=True, preopen_dirs={"/data": str(tmp_path)}),
    )
    not_capable, not_supported = 76, 58
    assert instance.handle_message(b"Q") == len("readable")
    assert instance.handle_message(b"U") == not_capable
    assert instance.handle_message(b"D") == not_capable
    assert instance.handle_message(b"O") == not_capable  # opened for reading: no writing
    assert (tmp_path / "data.txt").read_text() == "readable"
    assert not (tmp_path / "newdir").exists()
    assert instance.handle_message(b"I") == 0
    assert instance.handle_message(b"S") == not_supported


def test_a_symlink_out_of_a_preopened_directory_is_not_followed(
    wasmer_sandbox: WasmerSandbox, tmp_path: Path
) -> None:
    (tmp_path / "secret.txt").write_text("secret")
    inside = tmp_path / "inside"
    inside.mkdir()
    (inside / "data.txt").symlink_to(tmp_path / "secret.txt")
    instance = wasmer_sandbox.instantiate(
        wasmer_sandbox.compile(wat(WASI_LIMITS)),
        agent_name="wasi-escape",
        limits=ResourceLimits(),
        host=RecordingAgentHost(),
        capabilities=WasiCapabilities(enabled=True, preopen_dirs={"/data": str(inside)}),
    )
    assert instance.handle_message(b"Q") == 0  # the open failed: nothing was read


@pytest.mark.parametrize(
    ("name", "params", "args"),
    [
        ("proc_raise", "i32", "(i32.const 9)"),
        ("sock_recv", "i32 i32 i32 i32 i32 i32", "(i32.const 3) " * 6),
        ("sock_send", "i32 i32 i32 i32 i32", "(i32.const 3) " * 5),
        ("sock_shutdown", "i32 i32", "(i32.const 3) (i32.const 0)"),
    ],
)
def test_wasi_functions_wasmer_leaves_unimplemented_are_not_supported(
    wasmer_sandbox: WasmerSandbox, name: str, params: str, args: str
) -> None:
    source = f"""
    (module
      (import "wasi_snapshot_preview1" "{name}" (func $f (param {params}) (result i32)))
      (memory (export "memory") 1)
      (func (export "alloc") (param i32) (result i32) (i32.const 1024))
      (func (export "handle_message") (param i32 i32) (result i32) (call $f {args})))
    """
    instance = wasmer_sandbox.instantiate(
        wasmer_sandbox.compile(wat(source)),
        agent_name="unimplemented",
        limits=ResourceLimits(),
        host=RecordingAgentHost(),
        capabilities=WasiCapabilities(enabled=True),
    )
    assert instance.handle_message(b"x") == 58  # ENOTSUP, not a panic


async def test_config_section_is_honoured_and_validated(tmp_path: Path) -> None:
    factory = NodeFactory(tmp_path)
    factory.register_driver("sandbox", "wasmer", WasmerSandbox)
    config = {
        "sandbox.wasmer.fuel_slice": 250_000,
        "sandbox.wasmer.memory_ceiling": "64MB",
        "sandbox.wasmer.agent_pool_size": 2,
    }
    async with factory.node(plugin_options=["sandbox=wasmer"], config=config) as node:
        runtime = node.sandbox.runtime
        assert (runtime.settings.fuel_slice, runtime.settings.memory_ceiling) == (250_000, 64 << 20)
        assert runtime.pool_size == 2
    bad = {"sandbox.wasmer.fuel_slice": 5}
    with pytest.raises(ConfigError, match="fuel_slice: must be at least 1000"):
        async with factory.node(plugin_options=["sandbox=wasmer"], config=bad):
            pass


#: Fills 16 MiB over and over: few instructions, much time per iteration.
BULK_RUNAWAY = """
(module
  (memory (export "memory") 256)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle_message") (param i32 i32) (result i32)
    (loop $l (memory.fill (i32.const 0) (i32.const 1) (i32.const 16777216)) (br $l))
    (i32.const 0))
)
"""


def test_a_loop_of_bulk_memory_operations_meets_the_deadline(
    wasmer_sandbox: WasmerSandbox,
) -> None:
    limits = ResourceLimits(
        max_fuel=10**15, max_execution_time_ms=200, max_memory_bytes=32 * 1024 * 1024
    )
    instance = wasmer_sandbox.instantiate(
        wasmer_sandbox.compile(wat(BULK_RUNAWAY)),
        agent_name="bulk",
        limits=limits,
        host=RecordingAgentHost(),
    )
    with pytest.raises(ExecutionFailed) as failure:
        call_with_watchdog(lambda: instance.handle_message(b"x"))
    assert failure.value.reason == "timeout"


#: Spends its time in host calls (64 KiB of random bytes each): little fuel per second.
HOST_CALL_RUNAWAY = """
(module
  (import "caxton" "random" (func $random (param i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle_message") (param i32 i32) (result i32)
    (loop $l (drop (call $random (i32.const 0) (i32.const 65536))) (br $l))
    (i32.const 0))
)
"""


def test_a_loop_of_host_calls_is_stopped_at_the_deadline_not_a_slice_later(
    wasmer_sandbox: WasmerSandbox,
) -> None:
    limits = ResourceLimits(max_fuel=10**15, max_execution_time_ms=200)
    instance = wasmer_sandbox.instantiate(
        wasmer_sandbox.compile(wat(HOST_CALL_RUNAWAY)),
        agent_name="caller",
        limits=limits,
        host=RecordingAgentHost(),
    )
    with pytest.raises(ExecutionFailed) as failure:
        call_with_watchdog(lambda: instance.handle_message(b"x"))
    assert failure.value.reason == "timeout"
    # Stopped by the host call that saw the deadline, long before a slice was burnt.
    assert 0 < instance.last_fuel_used < wasmer_sandbox.runtime.settings.fuel_slice
