"""The engine-independent half of the agent ABI: the binary reader, the checks made
before instantiation, and the host call semantics."""

from __future__ import annotations

import pytest
import wasmtime
from hypothesis import given, settings
from hypothesis import strategies as st

from caxton.drivers.sandbox import ResourceLimits
from caxton.errors import AbiMismatch, ModuleInvalid
from caxton.sandbox import abi
from caxton.sandbox.abi import Status
from caxton.sandbox.hostcalls import AbiHostCalls, GuestMemoryError
from caxton.testing.sandbox import RecordingAgentHost


def wat(source: str) -> bytes:
    return bytes(wasmtime.wat2wasm(source))


AGENT = """
(module
  (import "caxton" "reply" (func (param i32 i32) (result i32)))
  (@custom "caxton.abi" "\\01")
  (memory (export "memory") 2 10)
  (global (export "g") i32 (i32.const 7))
  (func (export "alloc") (param i32) (result i32) (i32.const 0))
  (func (export "handle_message") (param i32 i32) (result i32) (i32.const 0))
  (func (export "handle_timer") (param i64))
  (start 2)
  (func)
)
"""


def test_reads_imports_exports_sections_and_memory() -> None:
    info = abi.parse_module(wat(AGENT.replace("(start 2)\n  (func)", "(func $s) (start $s)")))
    assert [(i.module, i.name, str(i.signature)) for i in info.imports] == [
        ("caxton", "reply", "(i32, i32) -> i32")
    ]
    assert info.exports["handle_message"].signature == abi.GUEST_EXPORTS["handle_message"]
    assert info.exports["handle_timer"].signature == abi.Signature(("i64",), ())
    assert info.exports["memory"].kind == "memory"
    assert info.memories == [abi.MemoryLimits(2, 10)]
    assert info.custom_sections["caxton.abi"] == [b"\x01"]
    assert info.has_start
    assert abi.check_module(info) == 1


def test_version_from_an_exported_global() -> None:
    module = '(module (global (export "caxton_abi_version") i32 (i32.const {})))'
    assert abi.check_module(abi.parse_module(wat(module.format(1)))) == 1
    with pytest.raises(AbiMismatch, match="ABI v7, which this node does not support"):
        abi.check_module(abi.parse_module(wat(module.format(7))))


def test_version_declarations_must_agree_and_be_well_formed() -> None:
    both = """(module (@custom "caxton.abi" "\\01")
                (global (export "caxton_abi_version") i32 (i32.const 2)))"""
    with pytest.raises(AbiMismatch, match="conflicting"):
        abi.check_module(abi.parse_module(wat(both)))
    mutable = '(module (global (export "caxton_abi_version") (mut i32) (i32.const 1)))'
    with pytest.raises(AbiMismatch, match="immutable i32"):
        abi.check_module(abi.parse_module(wat(mutable)))
    empty = '(module (@custom "caxton.abi" ""))'
    with pytest.raises(AbiMismatch, match="empty"):
        abi.check_module(abi.parse_module(wat(empty)))


def test_export_types_are_checked() -> None:
    wrong = """(module (memory (export "memory") 1)
        (func (export "alloc") (param i32) (result i32) (i32.const 0))
        (func (export "handle_message") (param i32) (result i32) (i32.const 0)))"""
    with pytest.raises(AbiMismatch, match=r"requires \(i32, i32\) -> i32"):
        abi.check_module(abi.parse_module(wat(wrong)))
    no_alloc = """(module (memory (export "memory") 1)
        (func (export "handle_message") (param i32 i32) (result i32) (i32.const 0)))"""
    with pytest.raises(AbiMismatch, match="not 'alloc'"):
        abi.check_module(abi.parse_module(wat(no_alloc)))


def test_imports_are_checked_against_the_abi_and_plugins() -> None:
    info = abi.parse_module(wat('(module (import "demo" "f" (func (param i32))))'))
    abi.check_module(info)  # unknown modules wait for instantiation (plugin functions)
    with pytest.raises(AbiMismatch, match=r"demo\.f, which no host function provides"):
        abi.check_imports(info, {})
    with pytest.raises(AbiMismatch, match="has type"):
        abi.check_imports(info, {("demo", "f"): abi.Signature(("i64",), ())})
    abi.check_imports(info, {("demo", "f"): abi.Signature(("i32",), ())})
    memory_as_send = abi.parse_module(wat('(module (import "caxton" "send" (memory 1)))'))
    with pytest.raises(AbiMismatch, match="as memory"):
        abi.check_module(memory_as_send)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "not a WebAssembly module"),
        (b"\x7fELF\x02\x01\x01\x00", "not a WebAssembly module"),
        (b"\0asm\x0d\x00\x01\x00", "components are not agents"),
        (b"\0asm\1\0\0\0\x01\x10\x01", "truncated"),
        (b"\0asm\1\0\0\0\x00\x05\x09caxton", "truncated"),
    ],
)
def test_malformed_modules(data: bytes, match: str) -> None:
    with pytest.raises(ModuleInvalid, match=match):
        abi.parse_module(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_are_read_or_refused_cleanly(body: bytes) -> None:
    for data in (body, b"\0asm\1\0\0\0" + body):
        try:
            info = abi.parse_module(data)
        except ModuleInvalid:
            continue
        try:
            abi.check_module(info)
        except AbiMismatch:
            pass


def test_every_example_agent_passes_or_fails_the_check_as_documented(
    example_agents: dict[str, bytes],
) -> None:
    for name, wasm in example_agents.items():
        info = abi.parse_module(wasm)
        if name == "future_abi":
            with pytest.raises(AbiMismatch):
                abi.check_module(info)
        else:
            assert abi.check_module(info) in (1, None), name


# -- host call semantics ------------------------------------------------------------------


class ByteMemory:
    """A GuestMemory over a bytearray."""

    def __init__(self, size: int = 4096) -> None:
        self.data = bytearray(size)

    def size(self) -> int:
        return len(self.data)

    def read(self, ptr: int, length: int) -> bytes:
        if ptr + length > len(self.data):
            raise GuestMemoryError("out of bounds")
        return bytes(self.data[ptr : ptr + length])

    def write(self, ptr: int, data: bytes) -> None:
        if ptr + len(data) > len(self.data):
            raise GuestMemoryError("out of bounds")
        self.data[ptr : ptr + len(data)] = data


Calls = tuple[AbiHostCalls, RecordingAgentHost, ByteMemory]


@pytest.fixture
def calls() -> Calls:
    host = RecordingAgentHost()
    return AbiHostCalls("a", host, ResourceLimits(max_message_bytes=100)), host, ByteMemory()


def test_kv_load_buffer_protocol(
    calls: Calls,
) -> None:
    hc, host, mem = calls
    mem.write(0, b"key")
    assert hc.kv_load(mem, 0, 3, 100, 10) == Status.NOT_FOUND
    host.kv[b"key"] = b"twelve bytes"
    assert hc.kv_load(mem, 0, 3, 100, 0) == 12  # size query
    assert hc.kv_load(mem, 0, 3, 100, 4) == 12  # too small: nothing written
    assert mem.read(100, 12) == bytes(12)
    assert hc.kv_load(mem, 0, 3, 100, 12) == 12
    assert mem.read(100, 12) == b"twelve bytes"
    assert hc.kv_load(mem, 0, 3, 4090, 12) == Status.INVALID  # buffer past the end
    host.kv[b"key"] = b""
    assert hc.kv_load(mem, 0, 3, 100, 0) == 0  # empty value: found, length 0


def test_bad_arguments_are_statuses(
    calls: Calls,
) -> None:
    hc, host, mem = calls
    assert hc.send(mem, 4000, 200) == Status.TOO_LARGE
    assert hc.send(mem, 4090, 50) == Status.INVALID
    assert hc.send(mem, 0, -1) == Status.INVALID
    assert hc.send(mem, -16, 4) == Status.INVALID  # 0xFFFFFFF0: far outside memory
    assert hc.kv_store(mem, 0, abi.MAX_KEY_BYTES + 1, 0, 1) == Status.TOO_LARGE
    assert hc.kv_store(mem, 0, 1, 0, 101) == Status.TOO_LARGE
    assert hc.random(mem, 0, abi.MAX_RANDOM_BYTES + 1) == Status.INVALID
    assert hc.timer_set(-5, 0) == Status.INVALID
    assert host.sent == []
    assert host.kv == {}
    assert host.timers == {}


def test_legacy_send_reads_a_nul_terminated_recipient(
    calls: Calls,
) -> None:
    hc, host, mem = calls
    mem.write(0, b"bob\0")
    mem.write(16, b"hello")
    assert hc.legacy_send_message(mem, 0, 16, 5) == Status.OK
    assert host.legacy_sent == [("bob", b"hello")]
    mem.write(32, b"x" * 80)  # no NUL within 65 bytes
    assert hc.legacy_send_message(mem, 32, 16, 5) == Status.INVALID
    mem.write(4090, b"abcdef")  # runs off the end without a NUL
    assert hc.legacy_send_message(mem, 4090, 16, 5) == Status.INVALID
    assert hc.legacy_send_message(mem, 200, 16, 5) == Status.INVALID  # empty name


def test_time_functions() -> None:
    fixed = AbiHostCalls("a", RecordingAgentHost(now_us=1_234_567_890), ResourceLimits())
    assert fixed.now_us() == 1_234_567_890
    assert fixed.legacy_get_time() == 1_234_567  # env.get_time is in milliseconds


def test_log_clamps_level_and_replaces_bad_utf8(
    calls: Calls,
) -> None:
    hc, host, mem = calls
    mem.write(0, b"caf\xff")
    hc.log(mem, 99, 0, 4)
    hc.log(mem, -3, 0, 3)
    hc.log(mem, 2, 5000, 3)
    assert host.logs == [
        (abi.LogLevel.ERROR, "caf\ufffd"),
        (abi.LogLevel.TRACE, "caf"),
        (abi.LogLevel.INFO, "<log text outside the agent's memory>"),
    ]


def test_sections_cover_the_module(example_agents: dict[str, bytes]) -> None:
    wasm = example_agents["probe"]
    found = abi.sections(wasm)
    assert wasm[:8] + b"".join(wasm[s.start : s.end] for s in found) == wasm
    ids = [s.id for s in found]
    assert ids[:3] == [1, 2, 3]  # type, import, function
    memory = next(s for s in found if s.id == 5)
    assert abi._Reader(wasm, memory.payload, memory.end).u32() == 1  # one memory
