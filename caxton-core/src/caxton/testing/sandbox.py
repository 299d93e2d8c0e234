"""Testing helpers for sandbox drivers: a recording host and the conformance suite.

A sandbox plugin proves it honours the agent ABI (docs/agent-abi.md) by subclassing
:class:`SandboxConformance` in its tests and providing a ``sandbox`` fixture that yields
a started driver::

    from caxton.testing.sandbox import SandboxConformance, example_agents  # noqa: F401

    class TestWasmerConformance(SandboxConformance):
        @pytest.fixture
        async def sandbox(self, tmp_path):
            driver = WasmerSandbox({}, make_context(tmp_path))
            await driver.start()
            yield driver
            await driver.close()

``example_agents`` (session-scoped; import it into your conftest or test module) builds
examples/agents from source with examples/agents/build.py and returns name -> bytes.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from caxton.drivers.sandbox import (
    AgentInstance,
    CompiledModule,
    HostCall,
    HostFunction,
    ResourceLimits,
    Sandbox,
    WasiCapabilities,
)
from caxton.errors import AbiMismatch, ExecutionFailed, ModuleInvalid, SandboxError
from caxton.errors import ValidationError as CaxtonValidationError
from caxton.sandbox.abi import (
    FUEL_EXHAUSTED,
    LogLevel,
    Status,
    message_too_large,
    timeout_message,
)

WASI_EBADF = 8
EMPTY_MODULE = b"\0asm\1\0\0\0"
NO_WASI = WasiCapabilities()
MiB = 1024 * 1024


# -------------------------------------------------------------------------
# RecordingAgentHost
# -------------------------------------------------------------------------


class RecordingAgentHost:
    """An :class:`caxton.drivers.sandbox.AgentHostAPI` that records what the agent did.

    Messages the agent sends or replies are kept as bytes (``sent``, ``replies``,
    ``legacy_sent``), log lines as ``(level, text)``, the KV store is a dict, and timers
    are numbered from 1. Set ``send_status``/``reply_status`` to make those calls fail
    with an ABI status, or ``raise_on`` to a method name to make it raise.
    """

    def __init__(self, *, kv: dict[bytes, bytes] | None = None, now_us: int | None = None) -> None:
        self.sent: list[bytes] = []
        self.replies: list[bytes] = []
        self.legacy_sent: list[tuple[str, bytes]] = []
        self.logs: list[tuple[int, str]] = []
        self.kv: dict[bytes, bytes] = dict(kv or {})
        self.timers: dict[int, tuple[int, bool]] = {}
        self.send_status = Status.OK
        self.reply_status = Status.OK
        self.raise_on: str | None = None
        self._now_us = now_us
        self._timer_ids = itertools.count(1)

    def _maybe_raise(self, name: str) -> None:
        if self.raise_on == name:
            raise RuntimeError(f"RecordingAgentHost.{name} was told to fail")

    def send(self, message: bytes) -> int:
        self._maybe_raise("send")
        self.sent.append(bytes(message))
        return int(self.send_status)

    def reply(self, message: bytes) -> int:
        self._maybe_raise("reply")
        self.replies.append(bytes(message))
        return int(self.reply_status)

    def legacy_send(self, recipient: str, content: bytes) -> int:
        self._maybe_raise("legacy_send")
        self.legacy_sent.append((recipient, bytes(content)))
        return int(self.send_status)

    def log(self, level: int, text: str) -> None:
        self._maybe_raise("log")
        self.logs.append((level, text))

    def now_us(self) -> int:
        self._maybe_raise("now_us")
        return self._now_us if self._now_us is not None else time.time_ns() // 1000

    def random_bytes(self, n: int) -> bytes:
        self._maybe_raise("random_bytes")
        return os.urandom(n)

    def kv_store(self, key: bytes, value: bytes) -> int:
        self._maybe_raise("kv_store")
        self.kv[bytes(key)] = bytes(value)
        return Status.OK

    def kv_load(self, key: bytes) -> bytes | None:
        self._maybe_raise("kv_load")
        return self.kv.get(bytes(key))

    def kv_delete(self, key: bytes) -> int:
        self._maybe_raise("kv_delete")
        return Status.OK if self.kv.pop(bytes(key), None) is not None else Status.NOT_FOUND

    def set_timer(self, delay_ms: int, repeat: bool) -> int:
        self._maybe_raise("set_timer")
        timer_id = next(self._timer_ids)
        self.timers[timer_id] = (delay_ms, repeat)
        return timer_id

    def cancel_timer(self, timer_id: int) -> int:
        self._maybe_raise("cancel_timer")
        return Status.OK if self.timers.pop(timer_id, None) is not None else Status.NOT_FOUND

    # -- conveniences for assertions ---------------------------------------------

    def sent_json(self) -> list[Any]:
        return [json.loads(m) for m in self.sent]

    def replies_json(self) -> list[Any]:
        return [json.loads(m) for m in self.replies]

    def log_texts(self) -> list[str]:
        return [text for _level, text in self.logs]


# -------------------------------------------------------------------------
# Building the example agents
# -------------------------------------------------------------------------


def find_examples_dir() -> Path:
    """examples/agents of a Caxton checkout: $CAXTON_EXAMPLES_DIR, or found upwards
    from the working directory and from this file."""
    env = os.environ.get("CAXTON_EXAMPLES_DIR")
    if env:
        return Path(env)
    for start in (Path.cwd(), Path(__file__).resolve()):
        for folder in (start, *start.parents):
            candidate = folder / "examples" / "agents"
            if (candidate / "build.py").is_file():
                return candidate
    raise FileNotFoundError(
        "examples/agents/build.py not found: run the tests from a Caxton checkout or set "
        "CAXTON_EXAMPLES_DIR"
    )


def build_example_agents(out_dir: Path, examples_dir: Path | None = None) -> dict[str, bytes]:
    """Build every example agent into ``out_dir``; return name -> wasm bytes."""
    script = (examples_dir or find_examples_dir()) / "build.py"
    result = subprocess.run(
        [sys.executable, str(script), "--out", str(out_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip()
        raise RuntimeError(f"building the example agents failed: {message}")
    return {path.stem: path.read_bytes() for path in sorted(out_dir.glob("*.wasm"))}


@pytest.fixture(scope="session")
def example_agents(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Every example agent, built from source once per session: name -> wasm bytes."""
    return build_example_agents(tmp_path_factory.mktemp("example-agents"))


# -------------------------------------------------------------------------
# The conformance suite
# -------------------------------------------------------------------------


def _wat(source: str) -> bytes:
    import wasmtime

    return bytes(wasmtime.wat2wasm(source))


#: A WASI agent: E -> number of env vars, P -> fd_prestat_get(3) errno, R -> errno of
#: opening data.txt for reading in the preopen, W -> errno of creating new.txt there,
#: anything else -> write "hello from wasi" to stdout.
WASI_PROBE = """
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get"
    (func $env_sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get"
    (func $prestat (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "hello from wasi\\n")
  (data (i32.const 96) "data.txt")
  (data (i32.const 112) "new.txt")
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle_message") (param $p i32) (param $n i32) (result i32)
    (local $cmd i32)
    (local.set $cmd (i32.load8_u (local.get $p)))
    (if (i32.eq (local.get $cmd) (i32.const 69)) ;; E
      (then
        (drop (call $env_sizes (i32.const 0) (i32.const 4)))
        (return (i32.load (i32.const 0)))))
    (if (i32.eq (local.get $cmd) (i32.const 80)) ;; P
      (then (return (call $prestat (i32.const 3) (i32.const 16)))))
    (if (i32.eq (local.get $cmd) (i32.const 82)) ;; R
      (then (return (call $path_open (i32.const 3) (i32.const 0) (i32.const 96) (i32.const 8)
                      (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 32)))))
    (if (i32.eq (local.get $cmd) (i32.const 87)) ;; W
      (then (return (call $path_open (i32.const 3) (i32.const 0) (i32.const 112) (i32.const 7)
                      (i32.const 1) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 32)))))
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 16))
    (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))
)
"""

PLUGIN_IMPORT = """
(module
  (import "demo" "add" (func $add (param i32 i32) (result i32)))
  (import "demo" "peek" (func $peek (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle_message") (param $p i32) (param $n i32) (result i32)
    (drop (call $peek (local.get $p) (local.get $n)))
    (call $add (i32.const 40) (i32.const 2)))
)
"""


def _json_message(content: Any, performative: str = "request", **fields: Any) -> bytes:
    message = {
        "performative": performative,
        "sender": "tester",
        "receiver": "agent",
        "content": content,
        "language": "json",
        "conversation_id": "c-1",
        **fields,
    }
    return json.dumps(message).encode()


def call_with_watchdog(fn: Callable[[], Any], seconds: float = 60.0) -> Any:
    """Run ``fn`` in a thread; fail the test if it has not returned after ``seconds``.

    Guards the wall-time tests: were the limit not enforced, the runaway agent would hang
    the suite instead of failing it (the stuck thread is left behind as a daemon).
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="caxton-watchdog", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"the call did not return within {seconds:g}s: wall-time limit not enforced")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


class SandboxConformance:
    """The agent ABI and limits every sandbox driver must honour.

    Subclasses provide a ``sandbox`` fixture (a started :class:`Sandbox`); the
    ``example_agents`` fixture of this module must be importable in the test module or
    a conftest. Each test fails if the guarantee it names is not kept.
    """

    limits = ResourceLimits(max_execution_time_ms=2_000)

    @pytest.fixture
    def host(self) -> RecordingAgentHost:
        return RecordingAgentHost()

    @pytest.fixture
    def start(
        self, sandbox: Sandbox, example_agents: dict[str, bytes], host: RecordingAgentHost
    ) -> Iterator[Any]:
        """``start(name_or_bytes, limits=..., host=...)`` -> a live instance (closed after)."""
        instances: list[AgentInstance] = []

        def start(
            agent: str | bytes,
            *,
            limits: ResourceLimits | None = None,
            host_api: RecordingAgentHost | None = None,
            capabilities: WasiCapabilities = NO_WASI,
            extra: tuple[HostFunction, ...] = (),
        ) -> AgentInstance:
            wasm = example_agents[agent] if isinstance(agent, str) else agent
            module = sandbox.compile(wasm)
            instance = sandbox.instantiate(
                module,
                agent_name=agent if isinstance(agent, str) else "inline",
                limits=limits or self.limits,
                host=host_api or host,
                capabilities=capabilities,
                extra_functions=extra,
            )
            instances.append(instance)
            return instance

        yield start
        for instance in instances:
            instance.close()

    # -- deploying ------------------------------------------------------------------------

    def test_empty_module_deploys_without_handler(
        self, sandbox: Sandbox, start: Any, host: RecordingAgentHost
    ) -> None:
        module = sandbox.compile(EMPTY_MODULE)
        assert isinstance(module, CompiledModule)
        assert not module.handles_messages
        assert module.abi_version is None
        instance = start(EMPTY_MODULE)
        instance.init()
        with pytest.raises(ExecutionFailed) as failure:
            instance.handle_message(_json_message("hi"))
        assert failure.value.reason == "abi"

    def test_bytes_that_are_not_wasm_are_refused(self, sandbox: Sandbox) -> None:
        with pytest.raises(ModuleInvalid, match="not a WebAssembly module"):
            sandbox.compile(b"definitely not wasm")
        with pytest.raises(ModuleInvalid):
            sandbox.compile(EMPTY_MODULE + b"\x01\x05\x01")  # truncated type section

    def test_unsupported_abi_version_is_refused_before_instantiation(
        self, sandbox: Sandbox, example_agents: dict[str, bytes]
    ) -> None:
        with pytest.raises(AbiMismatch, match="ABI v99"):
            sandbox.compile(example_agents["future_abi"])

    def test_declared_abi_version_is_read(
        self, sandbox: Sandbox, example_agents: dict[str, bytes]
    ) -> None:
        assert sandbox.compile(example_agents["echo"]).abi_version == 1
        assert sandbox.compile(example_agents["echo_c"]).abi_version == 1
        assert sandbox.compile(example_agents["legacy"]).abi_version is None

    def test_import_outside_the_abi_is_refused(self, sandbox: Sandbox) -> None:
        wasm = _wat('(module (import "caxton" "format_disk" (func)))')
        with pytest.raises(AbiMismatch, match=r"caxton\.format_disk"):
            sandbox.compile(wasm)
        wrong_type = _wat('(module (import "caxton" "send" (func (param i64))))')
        with pytest.raises(AbiMismatch, match=r"caxton\.send"):
            sandbox.compile(wrong_type)

    def test_module_without_handler_deploys_and_runs_init(
        self,
        sandbox: Sandbox,
        start: Any,
        host: RecordingAgentHost,
        example_agents: dict[str, bytes],
    ) -> None:
        assert not sandbox.compile(example_agents["no_handler"]).handles_messages
        instance = start("no_handler")
        instance.init()
        assert host.log_texts() == ["no_handler started"]
        with pytest.raises(ExecutionFailed, match="handle_message") as failure:
            instance.handle_message(_json_message("anyone?"))
        assert failure.value.reason == "abi"
        instance.init()  # still usable: a missing handler is not a crash
        assert len(host.logs) == 2

    # -- messages and host functions ------------------------------------------------------

    @pytest.mark.parametrize("agent", ["echo", "echo_c"])
    def test_echo_replies_inform_with_the_same_content(
        self, start: Any, host: RecordingAgentHost, agent: str
    ) -> None:
        instance = start(agent)
        content = {"text": 'hello, "agents"', "items": [1, 2, {"x": "}"}]}
        assert instance.handle_message(_json_message(content)) == 0
        assert instance.handle_message(_json_message("plain string")) == 0
        assert host.replies_json() == [
            {"performative": "inform", "content": content},
            {"performative": "inform", "content": "plain string"},
        ]
        assert instance.last_fuel_used > 0
        assert instance.total_fuel_used >= instance.last_fuel_used

    def test_counter_keeps_its_count_in_the_kv_store(self, start: Any) -> None:
        host = RecordingAgentHost()
        first = start("counter", host_api=host)
        for _ in range(3):
            first.handle_message(_json_message("tick"))
        assert [r["content"]["count"] for r in host.replies_json()] == [1, 2, 3]
        assert host.kv[b"count"] == b"3"
        first.close()
        # A new instance (a restart) continues from the stored state.
        second = start("counter", host_api=host)
        second.handle_message(_json_message("tick"))
        assert host.replies_json()[-1]["content"] == {"count": 4}

    def test_ledger_records_each_id_and_names_its_copy(self, start: Any) -> None:
        host = RecordingAgentHost()
        first = start("ledger", host_api=host)
        first.init()
        assert first.handle_message(_json_message({"id": "r-1"})) == 0
        assert first.handle_message(_json_message({"id": "m-2"}, performative="inform")) == 0
        assert host.kv == {b"r-1": b"1", b"m-2": b"1"}
        [reply] = host.replies_json()  # an inform is recorded, not answered
        assert reply["content"]["id"] == "r-1"
        copy = reply["content"]["copy"]
        assert len(copy) == 16
        assert host.log_texts()[-1] == f"ledger m-2 recorded by copy {copy}"
        assert first.handle_message(_json_message({"no": "id"})) == Status.INVALID
        second = start("ledger", host_api=host)  # another instance draws another token
        second.init()
        second.handle_message(_json_message({"id": "r-3"}))
        assert host.replies_json()[-1]["content"]["copy"] != copy

    def test_kv_store_load_delete(self, start: Any, host: RecordingAgentHost) -> None:
        instance = start("probe")
        assert instance.handle_message(b"Kvalue-1") == Status.NOT_FOUND
        assert host.replies == [b"value-1"]
        assert b"k" not in host.kv

    def test_kv_load_reports_the_size_when_the_buffer_is_too_small(
        self, start: Any, host: RecordingAgentHost
    ) -> None:
        instance = start("probe")
        assert instance.handle_message(b"Xhello world") == len(b"hello world")
        assert host.kv[b"k"] == b"hello world"

    def test_random_now_and_log(self, start: Any, host: RecordingAgentHost) -> None:
        instance = start("probe")
        assert instance.handle_message(b"R") == Status.OK
        assert len(host.replies[-1]) == 16
        before = time.time_ns() // 1000
        instance.handle_message(b"N")
        now = int.from_bytes(host.replies[-1], "little", signed=True)
        assert before <= now <= time.time_ns() // 1000
        instance.handle_message(b"L3careful")
        assert host.logs[-1] == (LogLevel.WARN, "careful")

    def test_send_and_reply_pass_bytes_and_status(
        self, start: Any, host: RecordingAgentHost
    ) -> None:
        instance = start("probe")
        message = _json_message("to-b", receiver="b")
        assert instance.handle_message(b"S" + message) == Status.OK
        assert host.sent == [message]
        host.send_status = Status.BUSY
        assert instance.handle_message(b"S" + message) == Status.BUSY
        assert instance.handle_message(b"Pdone") == Status.OK
        assert host.replies == [b"done"]

    def test_pointer_outside_memory_is_an_invalid_status_not_a_crash(
        self, start: Any, host: RecordingAgentHost
    ) -> None:
        instance = start("probe")
        assert instance.handle_message(b"B") == Status.INVALID
        assert host.replies == []
        assert instance.handle_message(b"Pstill fine") == Status.OK

    def test_failing_host_is_an_internal_status(self, start: Any, host: RecordingAgentHost) -> None:
        instance = start("probe")
        host.raise_on = "send"
        assert instance.handle_message(b"Sx") == Status.INTERNAL
        host.raise_on = None
        assert instance.handle_message(b"Sx") == Status.OK

    def test_timers(self, start: Any, host: RecordingAgentHost) -> None:
        instance = start("probe")
        instance.handle_message(b"M")
        timer_id = int.from_bytes(host.replies[-1], "little", signed=True)
        assert host.timers == {timer_id: (10, True)}
        instance.handle_timer(timer_id)
        assert host.sent[-1] == timer_id.to_bytes(8, "little")
        instance.handle_timer(2**40)  # i64 ids pass through whole
        assert host.sent[-1] == (2**40).to_bytes(8, "little")
        assert instance.handle_message(b"C" + timer_id.to_bytes(8, "little")) == Status.OK
        assert instance.handle_message(b"C" + timer_id.to_bytes(8, "little")) == (Status.NOT_FOUND)

    def test_init_and_shutdown(self, start: Any, host: RecordingAgentHost) -> None:
        instance = start("probe")
        instance.init()
        instance.shutdown()
        assert host.log_texts() == ["init", "shutdown"]

    def test_legacy_env_functions(self, start: Any, host: RecordingAgentHost) -> None:
        instance = start("legacy")
        before_ms = time.time_ns() // 1_000_000
        assert instance.handle_message(_json_message("hi")) == Status.OK
        assert host.logs == [(LogLevel.INFO, "legacy agent got a message")]
        [(recipient, content)] = host.legacy_sent
        assert recipient == "observer"
        sent_ms = int.from_bytes(content, "little", signed=True)
        assert before_ms <= sent_ms <= time.time_ns() // 1_000_000

    def test_plugin_host_functions_are_linked(self, start: Any) -> None:
        seen: list[tuple[str, bytes]] = []

        def add(call: HostCall, a: int, b: int) -> int:
            return a + b

        def peek(call: HostCall, ptr: int, length: int) -> int:
            seen.append((call.agent_name, call.read_memory(ptr, length)))
            return 0

        extra = (
            HostFunction("demo", "add", ("i32", "i32"), ("i32",), add),
            HostFunction("demo", "peek", ("i32", "i32"), ("i32",), peek),
        )
        instance = start(_wat(PLUGIN_IMPORT), extra=extra)
        assert instance.handle_message(b"payload") == 42
        assert seen == [("inline", b"payload")]

    def test_wasi_is_off_unless_granted(self, start: Any, host: RecordingAgentHost) -> None:
        wasm = _wat(WASI_PROBE)
        with pytest.raises(SandboxError, match="WASI"):
            start(wasm)
        bare = start(wasm, capabilities=WasiCapabilities(enabled=True))
        assert bare.handle_message(b"E") == 0  # no environment variables
        assert bare.handle_message(b"P") == WASI_EBADF  # no preopened directory
        assert bare.handle_message(b"H") == 0
        assert host.logs == []  # stdout is not connected to anything

    def test_wasi_capabilities_grant_stdio_env_and_read_only_dirs(
        self, start: Any, host: RecordingAgentHost, tmp_path: Path
    ) -> None:
        (tmp_path / "data.txt").write_text("readable")
        granted = WasiCapabilities(
            enabled=True,
            stdio=True,
            env={"A": "1", "B": "2"},
            preopen_dirs={"/data": str(tmp_path)},
        )
        instance = start(_wat(WASI_PROBE), capabilities=granted)
        assert instance.handle_message(b"H") == 0
        assert (LogLevel.INFO, "hello from wasi") in host.logs
        assert instance.handle_message(b"E") == 2
        assert instance.handle_message(b"P") == 0
        assert instance.handle_message(b"R") == 0
        assert instance.handle_message(b"W") != 0  # read-only: no file is created
        assert not (tmp_path / "new.txt").exists()

    # -- limits ------------------------------------------------------------------------------

    def test_fuel_limit_stops_a_runaway_loop(self, start: Any) -> None:
        limits = ResourceLimits(max_fuel=1_000_000, max_execution_time_ms=30_000)
        instance = start("infinite_loop", limits=limits)
        with pytest.raises(ExecutionFailed) as failure:
            instance.handle_message(_json_message("spin"))
        assert failure.value.reason == "fuel"
        assert str(failure.value) == FUEL_EXHAUSTED
        assert instance.last_fuel_used >= 1_000_000

    def test_fuel_is_refilled_for_each_delivery(self, start: Any) -> None:
        probe = start("probe", limits=ResourceLimits(max_fuel=10**9))
        probe.handle_message(b"W")
        cost = probe.last_fuel_used
        assert cost > 100_000
        # Enough for one delivery, not for two: succeeds every time only if refilled.
        limited = start("probe", limits=ResourceLimits(max_fuel=cost * 3 // 2))
        for _ in range(3):
            assert limited.handle_message(b"W") == 0
        tight = start("probe", limits=ResourceLimits(max_fuel=cost // 2))
        with pytest.raises(ExecutionFailed) as failure:
            tight.handle_message(b"W")
        assert failure.value.reason == "fuel"

    def test_wall_time_limit_stops_a_runaway_loop(self, start: Any) -> None:
        limits = ResourceLimits(max_fuel=10**15, max_execution_time_ms=200)
        instance = start("infinite_loop", limits=limits)
        with pytest.raises(ExecutionFailed) as failure:
            call_with_watchdog(lambda: instance.handle_message(_json_message("spin")))
        assert failure.value.reason == "timeout"
        assert str(failure.value) == timeout_message(200) == "Execution timeout after 200ms"

    def test_memory_limit_stops_a_memory_bomb(self, start: Any) -> None:
        limits = ResourceLimits(max_memory_bytes=2 * MiB)
        instance = start("memory_bomb", limits=limits)
        with pytest.raises(ExecutionFailed) as failure:
            instance.handle_message(_json_message("grow"))
        assert failure.value.reason == "memory"
        assert "max_memory_bytes" in str(failure.value)
        assert instance.memory_size() <= 2 * MiB

    def test_alloc_that_cannot_grow_memory_is_a_memory_failure(self, start: Any) -> None:
        limits = ResourceLimits(max_memory_bytes=2 * MiB, max_message_bytes=8 * MiB)
        instance = start("echo_c", limits=limits)
        with pytest.raises(ExecutionFailed) as failure:
            instance.handle_message(_json_message("x" * (3 * MiB)))
        assert failure.value.reason == "memory"
        assert instance.memory_size() <= 2 * MiB

    def test_memory_growth_past_the_limit_fails(self, start: Any) -> None:
        small = start("probe", limits=ResourceLimits(max_memory_bytes=1 * MiB))
        assert small.handle_message(b"G\x20") == -1  # 32 more pages = 2 MiB
        large = start("probe", limits=ResourceLimits(max_memory_bytes=8 * MiB))
        assert large.handle_message(b"G\x20") == 1  # the previous size in pages

    def test_table_growth_past_the_limit_fails(self, start: Any) -> None:
        small = start("probe", limits=ResourceLimits(max_table_elements=100))
        assert small.handle_message(b"T\x02") == -1  # 200 more elements
        large = start("probe", limits=ResourceLimits(max_table_elements=1000))
        assert large.handle_message(b"T\x02") == 1

    def test_message_size_limit(self, start: Any, host: RecordingAgentHost) -> None:
        limits = ResourceLimits(max_message_bytes=1024)
        instance = start("echo_c", limits=limits)
        with pytest.raises(CaxtonValidationError) as too_big:
            instance.handle_message(b"x" * 1025)
        assert str(too_big.value) == message_too_large(1025, 1024)
        # An outgoing message over the limit is refused with TOO_LARGE.
        message = json.dumps({"content": "y" * 1000}).encode()
        assert len(message) <= 1024
        assert instance.handle_message(message) == Status.TOO_LARGE
        assert host.replies == []
        assert instance.handle_message(_json_message("ok")) == Status.OK

    def test_deep_recursion_is_a_stack_overflow_trap(self, start: Any) -> None:
        instance = start("deep_recursion")
        with pytest.raises(ExecutionFailed, match="stack overflow") as failure:
            instance.handle_message(_json_message("recurse"))
        assert failure.value.reason == "trap"

    def test_trap_is_reported_and_poisons_the_instance(self, start: Any) -> None:
        instance = start("trap")
        with pytest.raises(ExecutionFailed, match="unreachable") as failure:
            instance.handle_message(_json_message("boom"))
        assert failure.value.reason == "trap"
        with pytest.raises(ExecutionFailed, match="new instance") as again:
            instance.handle_message(_json_message("boom"))
        assert again.value.reason == "abi"

    def test_a_runaway_agent_does_not_affect_the_others(
        self, start: Any, host: RecordingAgentHost
    ) -> None:
        other_host = RecordingAgentHost()
        echo = start("echo", host_api=other_host)
        runaways = [
            start("infinite_loop", limits=ResourceLimits(max_fuel=500_000)),
            start(
                "infinite_loop", limits=ResourceLimits(max_fuel=10**15, max_execution_time_ms=100)
            ),
            start("memory_bomb", limits=ResourceLimits(max_memory_bytes=1 * MiB)),
            start("deep_recursion"),
            start("trap"),
        ]
        for index, runaway in enumerate(runaways):
            with pytest.raises(ExecutionFailed):
                call_with_watchdog(partial(runaway.handle_message, _json_message("bad")))
            assert echo.handle_message(_json_message(index)) == 0
        assert [r["content"] for r in other_host.replies_json()] == list(range(len(runaways)))
        # A fresh instance of a failed agent works (what a restart does).
        assert start("trap") is not None

    def test_closed_instance_refuses_calls(self, start: Any) -> None:
        instance = start("echo")
        instance.close()
        instance.close()  # twice is fine
        with pytest.raises(ExecutionFailed):
            instance.handle_message(_json_message("late"))
