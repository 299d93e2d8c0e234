"""What is particular to core's wasmtime sandbox: its caches, pool, config, threads."""

from __future__ import annotations

import importlib.metadata
import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pluggy
import pytest
import wasmtime
from sandbox_fixtures import make_wasmtime_sandbox

from caxton.drivers.base import DriverContext
from caxton.drivers.sandbox import HostFunction, ResourceLimits
from caxton.errors import ConfigError, ExecutionFailed, SandboxError
from caxton.sandbox.wasmtime_sandbox import CONFIG_SECTION, WasmtimeSandbox
from caxton.testing.sandbox import RecordingAgentHost

MiB = 1024 * 1024


def message(content: object) -> bytes:
    return json.dumps({"performative": "request", "sender": "t", "content": content}).encode()


def wait_for(condition: object, what: str, timeout: float = 20.0) -> None:
    """Wait for a background thread's work; fails only if it never happens."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_published_as_the_wasmtime_entry_point() -> None:
    (entry,) = importlib.metadata.entry_points(group="caxton.sandbox", name="wasmtime")
    assert entry.load() is WasmtimeSandbox
    assert WasmtimeSandbox.config_section is CONFIG_SECTION
    assert CONFIG_SECTION.path == "sandbox.wasmtime"


def test_pool_size_defaults_to_the_node_runtime_setting(tmp_path: Path) -> None:
    node = SimpleNamespace(config={"runtime": {"agent_pool_size": 7, "module_cache": False}})
    context = DriverContext(
        node_id="n",
        data_dir=tmp_path,
        hook=pluggy.PluginManager("caxton").hook,
        services={"node": node},
    )
    sandbox = WasmtimeSandbox({}, context)
    assert sandbox.runtime.pool_size == 7
    assert sandbox.runtime.cache_dir is None
    own = WasmtimeSandbox({"agent_pool_size": 2}, context)
    assert own.runtime.pool_size == 2


async def test_compiled_modules_are_cached_on_disk(
    tmp_path: Path, example_agents: dict[str, bytes]
) -> None:
    first = make_wasmtime_sandbox(tmp_path)
    first.compile(example_agents["echo"])
    assert first.runtime.stats["compile"] == 1
    files = list((tmp_path / "cache" / "wasmtime").glob("*.cwasm"))
    assert len(files) == 1
    assert files[0].name.startswith(first.compile(example_agents["echo"]).sha256)
    assert first.runtime.stats["compile_memory_hit"] == 1

    second = make_wasmtime_sandbox(tmp_path)
    module = second.compile(example_agents["echo"])
    assert second.runtime.stats["compile_disk_hit"] == 1
    assert second.runtime.stats["compile"] == 0
    host = RecordingAgentHost()
    await second.start()
    try:
        instance = second.instantiate(module, agent_name="e", limits=ResourceLimits(), host=host)
        assert instance.handle_message(message("cached")) == 0
        assert host.replies_json()[0]["content"] == "cached"
    finally:
        await second.close()

    files[0].write_bytes(b"garbage")  # a damaged cache entry is recompiled, not fatal
    third = make_wasmtime_sandbox(tmp_path)
    third.compile(example_agents["echo"])
    assert third.runtime.stats["compile"] == 1


def test_module_cache_can_be_switched_off(tmp_path: Path, example_agents: dict[str, bytes]) -> None:
    sandbox = make_wasmtime_sandbox(tmp_path, module_cache=False)
    sandbox.compile(example_agents["echo"])
    assert not (tmp_path / "cache").exists()


async def test_pool_serves_prewarmed_instances_under_each_agents_limits(
    tmp_path: Path, example_agents: dict[str, bytes]
) -> None:
    sandbox = make_wasmtime_sandbox(tmp_path, agent_pool_size=2)
    await sandbox.start()
    try:
        module = sandbox.compile(example_agents["probe"])
        pools = sandbox.runtime._pools
        wait_for(lambda: sum(len(p) for p in pools.values()) == 2, "the pool to fill")
        host = RecordingAgentHost()
        small = sandbox.instantiate(
            module, agent_name="p", limits=ResourceLimits(max_memory_bytes=1 * MiB), host=host
        )
        assert sandbox.runtime.stats["pool_hit"] == 1
        assert sandbox.runtime.stats["instantiate"] == 0
        assert small.handle_message(b"G\x20") == -1  # the pooled store got this agent's limit
        assert small.handle_message(b"Kpooled") == -3
        assert host.replies == [b"pooled"]
        wait_for(lambda: sum(len(p) for p in pools.values()) == 2, "the pool to refill")
    finally:
        await sandbox.close()
    assert sandbox.runtime._ticker is None


async def test_no_pool_when_size_is_zero(tmp_path: Path, example_agents: dict[str, bytes]) -> None:
    sandbox = make_wasmtime_sandbox(tmp_path, agent_pool_size=0)
    await sandbox.start()
    try:
        module = sandbox.compile(example_agents["echo"])
        sandbox.instantiate(
            module, agent_name="e", limits=ResourceLimits(), host=RecordingAgentHost()
        ).close()
        assert sandbox.runtime.stats["instantiate"] == 1
        assert sandbox.runtime._filler is None
    finally:
        await sandbox.close()


async def test_memory_base_is_refreshed_when_memory_moves(
    tmp_path: Path, example_agents: dict[str, bytes]
) -> None:
    # With a tiny reservation every memory.grow moves the linear memory.
    sandbox = make_wasmtime_sandbox(tmp_path, memory_reservation="64KB", agent_pool_size=0)
    await sandbox.start()
    try:
        host = RecordingAgentHost()
        module = sandbox.compile(example_agents["echo"])
        instance = sandbox.instantiate(
            module,
            agent_name="e",
            host=host,
            limits=ResourceLimits(max_message_bytes=8 * MiB, max_fuel=10**9),
        )
        sizes = [10, 70_000, 300_000, 1_500_000, 3_000_000]
        for size in sizes:
            assert instance.handle_message(message("z" * size)) == 0
        assert [len(r["content"]) for r in host.replies_json()] == sizes
        assert instance.memory_size() > 3_000_000
    finally:
        await sandbox.close()


def test_initial_memory_over_the_limit_fails_instantiation(
    wasmtime_sandbox: WasmtimeSandbox,
) -> None:
    wasm = bytes(wasmtime.wat2wasm('(module (memory (export "memory") 64))'))  # 4 MiB
    module = wasmtime_sandbox.compile(wasm)
    with pytest.raises(ExecutionFailed) as failure:
        wasmtime_sandbox.instantiate(
            module,
            agent_name="big",
            limits=ResourceLimits(max_memory_bytes=1 * MiB),
            host=RecordingAgentHost(),
        )
    assert failure.value.reason == "memory"


def test_trapping_start_function_fails_instantiation(wasmtime_sandbox: WasmtimeSandbox) -> None:
    wasm = bytes(wasmtime.wat2wasm("(module (func $s unreachable) (start $s))"))
    module = wasmtime_sandbox.compile(wasm)
    with pytest.raises(ExecutionFailed, match="unreachable") as failure:
        wasmtime_sandbox.instantiate(
            module, agent_name="s", limits=ResourceLimits(), host=RecordingAgentHost()
        )
    assert failure.value.reason == "trap"


def test_failure_details_keep_the_wasm_backtrace(
    wasmtime_sandbox: WasmtimeSandbox, example_agents: dict[str, bytes]
) -> None:
    module = wasmtime_sandbox.compile(example_agents["trap"])
    instance = wasmtime_sandbox.instantiate(
        module, agent_name="t", limits=ResourceLimits(), host=RecordingAgentHost()
    )
    with pytest.raises(ExecutionFailed) as failure:
        instance.handle_message(b"{}")
    assert "backtrace" in failure.value.details
    assert instance.poisoned == "trap"


def test_instances_run_concurrently_in_threads(
    wasmtime_sandbox: WasmtimeSandbox, example_agents: dict[str, bytes]
) -> None:
    module = wasmtime_sandbox.compile(example_agents["echo_c"])
    hosts = [RecordingAgentHost() for _ in range(4)]
    instances = [
        wasmtime_sandbox.instantiate(module, agent_name=f"e{i}", limits=ResourceLimits(), host=h)
        for i, h in enumerate(hosts)
    ]
    errors: list[BaseException] = []

    def hammer(index: int) -> None:
        try:
            for n in range(300):
                instances[index].handle_message(message([index, n]))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for index, host in enumerate(hosts):
        assert [r["content"] for r in host.replies_json()] == [[index, n] for n in range(300)]


def test_a_timeout_in_one_thread_leaves_other_threads_running(
    wasmtime_sandbox: WasmtimeSandbox, example_agents: dict[str, bytes]
) -> None:
    loop = wasmtime_sandbox.compile(example_agents["infinite_loop"])
    echo = wasmtime_sandbox.compile(example_agents["echo"])
    runaway = wasmtime_sandbox.instantiate(
        loop,
        agent_name="loop",
        host=RecordingAgentHost(),
        limits=ResourceLimits(max_fuel=10**15, max_execution_time_ms=300),
    )
    host = RecordingAgentHost()
    worker = wasmtime_sandbox.instantiate(echo, agent_name="e", limits=ResourceLimits(), host=host)
    failures: list[ExecutionFailed] = []

    def run_away() -> None:
        try:
            runaway.handle_message(b"{}")
        except ExecutionFailed as exc:
            failures.append(exc)

    thread = threading.Thread(target=run_away)
    thread.start()
    count = 0
    while thread.is_alive():
        worker.handle_message(message(count))
        count += 1
    thread.join()
    assert [f.reason for f in failures] == ["timeout"]
    assert count > 0
    assert len(host.replies) == count


def test_large_memory_limit_stops_a_bomb_by_memory_not_time(
    wasmtime_sandbox: WasmtimeSandbox, example_agents: dict[str, bytes]
) -> None:
    # With the default reservation growth never moves (copies) the memory, so growing
    # page by page to a large limit is quick: the bomb ends on its memory limit, well
    # before its time limit.
    module = wasmtime_sandbox.compile(example_agents["memory_bomb"])
    limits = ResourceLimits(max_memory_bytes=256 * MiB, max_execution_time_ms=5_000)
    bomb = wasmtime_sandbox.instantiate(
        module, agent_name="bomb", limits=limits, host=RecordingAgentHost()
    )
    with pytest.raises(ExecutionFailed) as failure:
        bomb.handle_message(b"{}")
    assert failure.value.reason == "memory"
    assert bomb.memory_size() == 256 * MiB


@pytest.mark.parametrize(
    ("function", "match"),
    [
        (HostFunction("caxton", "extra", (), (), lambda call: None), "reserved"),
        (HostFunction("demo", "f", ("externref",), (), lambda call, x: None), "i32, i64"),
    ],
)
def test_bad_plugin_host_functions_are_refused(
    wasmtime_sandbox: WasmtimeSandbox, function: HostFunction, match: str
) -> None:
    module = wasmtime_sandbox.compile(b"\0asm\1\0\0\0")
    with pytest.raises(SandboxError, match=match):
        wasmtime_sandbox.instantiate(
            module,
            agent_name="x",
            limits=ResourceLimits(),
            host=RecordingAgentHost(),
            extra_functions=(function,),
        )


def test_wasm_stack_larger_than_a_thread_stack_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_wasm_stack"):
        make_wasmtime_sandbox(tmp_path, max_wasm_stack="16MB")


BLOCKING_AGENT = """
(module
  (import "demo" "block" (func $block (result i32)))
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle_message") (param i32 i32) (result i32) (call $block))
)
"""


def test_close_during_a_call_waits_for_it_and_concurrent_calls_are_refused(
    wasmtime_sandbox: WasmtimeSandbox,
) -> None:
    entered, release = threading.Event(), threading.Event()

    def block(call: object) -> int:
        entered.set()
        release.wait(30)
        return 7

    module = wasmtime_sandbox.compile(bytes(wasmtime.wat2wasm(BLOCKING_AGENT)))
    blocking = HostFunction("demo", "block", (), ("i32",), block)
    instance = wasmtime_sandbox.instantiate(
        module,
        agent_name="b",
        limits=ResourceLimits(max_execution_time_ms=60_000),
        host=RecordingAgentHost(),
        extra_functions=(blocking,),
    )
    results: list[int] = []
    worker = threading.Thread(target=lambda: results.append(instance.handle_message(b"go")))
    worker.start()
    assert entered.wait(30)
    # The guest is running (its host function is blocked): a second call is refused...
    with pytest.raises(ExecutionFailed, match="already running"):
        instance.handle_message(b"again")
    # ...and close() does not free the store under it, it is deferred.
    instance.close()
    release.set()
    worker.join(30)
    assert results == [7]
    assert instance.memory_size() == 0  # closed once the call returned
    with pytest.raises(ExecutionFailed, match="closed"):
        instance.handle_message(b"late")
