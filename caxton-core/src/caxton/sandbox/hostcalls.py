"""The bodies of the ABI v1 host imports, independent of any engine.

A sandbox driver links each import of docs/agent-abi.md to the method of the same name
on :class:`AbiHostCalls`, giving it access to the calling instance's linear memory
through a :class:`GuestMemory`. Everything about the ABI's semantics lives here
(argument checks, return codes, the ``kv_load`` buffer protocol, the legacy ``env``
functions), so every engine behaves alike.
"""

from __future__ import annotations

import logging
from typing import Protocol

from caxton.drivers.sandbox import AgentHostAPI, ResourceLimits
from caxton.errors import ValidationError
from caxton.sandbox.abi import (
    MAX_KEY_BYTES,
    MAX_LOG_BYTES,
    MAX_RANDOM_BYTES,
    MAX_RECIPIENT_BYTES,
    LogLevel,
    Status,
)

log = logging.getLogger("caxton.sandbox")


class GuestMemoryError(Exception):
    """A pointer/length pair outside the guest's linear memory."""


class GuestMemory(Protocol):
    """Bounds-checked access to one instance's linear memory, valid during one call."""

    def read(self, ptr: int, length: int) -> bytes:
        """Raise :class:`GuestMemoryError` when ``[ptr, ptr+length)`` is out of bounds."""

    def write(self, ptr: int, data: bytes) -> None:
        """Raise :class:`GuestMemoryError` when the range is out of bounds."""

    def size(self) -> int:
        """Current size of the memory in bytes."""


def unsigned(value: int) -> int:
    """An i32 pointer as the guest meant it (wasm32 addresses are unsigned)."""
    return value & 0xFFFFFFFF


class AbiHostCalls:
    """The host side of one agent's imports. Methods take raw wasm arguments (ints).

    A method never raises: a bad pointer or length is :data:`Status.INVALID`, a failing
    :class:`AgentHostAPI` is logged and answered with :data:`Status.INTERNAL`.
    """

    __slots__ = ("agent_name", "host", "max_message_bytes")

    def __init__(self, agent_name: str, host: AgentHostAPI, limits: ResourceLimits) -> None:
        self.agent_name = agent_name
        self.host = host
        self.max_message_bytes = limits.max_message_bytes

    def _failed(self, what: str) -> int:
        log.exception("agent %s: host function %s failed", self.agent_name, what)
        return Status.INTERNAL

    # -- messaging ----------------------------------------------------------------

    def send(self, mem: GuestMemory, ptr: int, length: int) -> int:
        return self._message(mem, ptr, length, reply=False)

    def reply(self, mem: GuestMemory, ptr: int, length: int) -> int:
        return self._message(mem, ptr, length, reply=True)

    def _message(self, mem: GuestMemory, ptr: int, length: int, *, reply: bool) -> int:
        if length < 0:
            return Status.INVALID
        if length > self.max_message_bytes:
            return Status.TOO_LARGE
        try:
            data = mem.read(unsigned(ptr), length)
        except GuestMemoryError:
            return Status.INVALID
        try:
            return int(self.host.reply(data) if reply else self.host.send(data))
        except Exception:
            return self._failed("reply" if reply else "send")

    def legacy_send_message(
        self, mem: GuestMemory, recipient_ptr: int, ptr: int, length: int
    ) -> int:
        """``env.send_message``: recipient is a NUL-terminated UTF-8 agent name."""
        if length < 0:
            return Status.INVALID
        if length > self.max_message_bytes:
            return Status.TOO_LARGE
        try:
            recipient = _read_c_string(mem, unsigned(recipient_ptr), MAX_RECIPIENT_BYTES + 1)
            content = mem.read(unsigned(ptr), length)
        except (GuestMemoryError, UnicodeDecodeError):
            return Status.INVALID
        if not recipient:
            return Status.INVALID
        try:
            return int(self.host.legacy_send(recipient, content))
        except Exception:
            return self._failed("env.send_message")

    # -- logging and time -----------------------------------------------------------

    def log(self, mem: GuestMemory, level: int, ptr: int, length: int) -> None:
        if length < 0:
            return
        try:
            raw = mem.read(unsigned(ptr), min(length, MAX_LOG_BYTES))
        except GuestMemoryError:
            raw = b"<log text outside the agent's memory>"
        level = min(max(level, LogLevel.TRACE), LogLevel.ERROR)
        try:
            self.host.log(level, raw.decode("utf-8", errors="replace"))
        except Exception:
            self._failed("log")

    def legacy_log(self, mem: GuestMemory, ptr: int, length: int) -> None:
        self.log(mem, LogLevel.INFO, ptr, length)

    def now_us(self) -> int:
        try:
            return int(self.host.now_us())
        except Exception:
            self._failed("now_us")
            return 0

    def legacy_get_time(self) -> int:
        """``env.get_time``: milliseconds since the Unix epoch."""
        return self.now_us() // 1000

    def random(self, mem: GuestMemory, ptr: int, length: int) -> int:
        if length < 0 or length > MAX_RANDOM_BYTES:
            return Status.INVALID
        try:
            data = self.host.random_bytes(length)
        except Exception:
            return self._failed("random")
        try:
            mem.write(unsigned(ptr), data[:length])
        except GuestMemoryError:
            return Status.INVALID
        return Status.OK

    # -- key/value store --------------------------------------------------------------

    def _key(self, mem: GuestMemory, ptr: int, length: int) -> bytes | int:
        if length < 0:
            return Status.INVALID
        if length > MAX_KEY_BYTES:
            return Status.TOO_LARGE
        try:
            return mem.read(unsigned(ptr), length)
        except GuestMemoryError:
            return Status.INVALID

    def kv_store(self, mem: GuestMemory, kptr: int, klen: int, vptr: int, vlen: int) -> int:
        key = self._key(mem, kptr, klen)
        if isinstance(key, int):
            return key
        if vlen < 0:
            return Status.INVALID
        if vlen > self.max_message_bytes:
            return Status.TOO_LARGE
        try:
            value = mem.read(unsigned(vptr), vlen)
        except GuestMemoryError:
            return Status.INVALID
        try:
            return int(self.host.kv_store(key, value))
        except Exception:
            return self._failed("kv_store")

    def kv_load(self, mem: GuestMemory, kptr: int, klen: int, outptr: int, outcap: int) -> int:
        """Return the value's length; write it only when it fits in ``outcap`` bytes.

        ``outcap == 0`` is a size query. A value longer than ``outcap`` is not written
        and its length is returned, so the guest can allocate and call again.
        """
        key = self._key(mem, kptr, klen)
        if isinstance(key, int):
            return key
        if outcap < 0:
            return Status.INVALID
        try:
            value = self.host.kv_load(key)
        except Exception:
            return self._failed("kv_load")
        if value is None:
            return Status.NOT_FOUND
        if 0 < len(value) <= outcap:
            try:
                mem.write(unsigned(outptr), value)
            except GuestMemoryError:
                return Status.INVALID
        return len(value)

    def kv_delete(self, mem: GuestMemory, kptr: int, klen: int) -> int:
        key = self._key(mem, kptr, klen)
        if isinstance(key, int):
            return key
        try:
            return int(self.host.kv_delete(key))
        except Exception:
            return self._failed("kv_delete")

    # -- timers ---------------------------------------------------------------------

    def timer_set(self, delay_ms: int, repeat: int) -> int:
        if delay_ms < 0:
            return Status.INVALID
        try:
            return int(self.host.set_timer(delay_ms, bool(repeat)))
        except Exception:
            return self._failed("timer_set")

    def timer_cancel(self, timer_id: int) -> int:
        try:
            return int(self.host.cancel_timer(timer_id))
        except Exception:
            return self._failed("timer_cancel")


class MemoryHostCall:
    """The :class:`caxton.drivers.sandbox.HostCall` handed to plugin host functions:
    the calling agent, its host, and its memory through a :class:`GuestMemory` (an
    address outside it is a :class:`caxton.errors.ValidationError`)."""

    __slots__ = ("_memory", "agent_name", "host")

    def __init__(self, agent_name: str, host: AgentHostAPI, memory: GuestMemory) -> None:
        self.agent_name = agent_name
        self.host = host
        self._memory = memory

    def read_memory(self, ptr: int, length: int) -> bytes:
        try:
            return self._memory.read(unsigned(ptr), length)
        except GuestMemoryError as exc:
            raise ValidationError(str(exc)) from None

    def write_memory(self, ptr: int, data: bytes) -> None:
        try:
            self._memory.write(unsigned(ptr), data)
        except GuestMemoryError as exc:
            raise ValidationError(str(exc)) from None


def _read_c_string(mem: GuestMemory, ptr: int, limit: int) -> str:
    """Read a NUL-terminated string of at most ``limit`` bytes (NUL included)."""
    available = mem.size() - ptr
    if available <= 0:
        raise GuestMemoryError("recipient outside the agent's memory")
    data = mem.read(ptr, min(limit, available))
    end = data.find(b"\0")
    if end < 0:
        raise GuestMemoryError("recipient is not NUL-terminated")
    return data[:end].decode("utf-8")
