"""The wasmer sandbox's machinery: store, module cache, per-thread linkers, instances.

Imported by :class:`caxton_sandbox_wasmer.driver.WasmerSandbox` once wasmer is known to
be importable. docs/sandbox-wasmer.md describes the design. Two facts of wasmer-python
1.1 shape it:

* every wasmer object except the ``Store`` is bound to the thread that created it (any
  use from another thread is a Rust panic), so compiled modules are kept as serialized
  bytes and deserialized once per thread, host functions are defined once per thread,
  and an instance used from a new thread is rebuilt there from a copy of its state;
* wasm runs with the GIL held, so no other Python thread can interrupt it: the limits
  are compiled into the agent (:mod:`caxton_sandbox_wasmer.metering`) and the wall-clock
  deadline is checked by the host whenever the guest asks for its next slice of fuel.
"""

from __future__ import annotations

import collections
import ctypes
import hashlib
import importlib.metadata
import json
import logging
import os
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import wasmer
from wasmer_compiler_cranelift import Compiler

from caxton.drivers.sandbox import (
    AgentHostAPI,
    AgentInstance,
    CompiledModule,
    HostFunction,
    ResourceLimits,
    WasiCapabilities,
)
from caxton.errors import (
    AbiMismatch,
    ExecutionFailed,
    ModuleInvalid,
    SandboxError,
    ValidationError,
    first_line,
)
from caxton.sandbox import abi
from caxton.sandbox.hostcalls import AbiHostCalls, GuestMemoryError, MemoryHostCall
from caxton_sandbox_wasmer import metering

log = logging.getLogger("caxton.sandbox.wasmer")

WASMER_VERSION = importlib.metadata.version("wasmer")
_VALUE_TYPES = {
    "i32": wasmer.Type.I32,
    "i64": wasmer.Type.I64,
    "f32": wasmer.Type.F32,
    "f64": wasmer.Type.F64,
}
_MAX_I32 = 0x7FFFFFFF


@dataclass(frozen=True)
class WasmerSettings:
    """Engine-wide settings (``[sandbox.wasmer]``)."""

    #: Fuel handed to the guest at a time; the wall-clock deadline is checked between
    #: slices, so this sets the granularity of ``max_execution_time_ms``.
    fuel_slice: int = 1_000_000
    #: Node-wide ceiling of any agent's memory: declared memory maxima are capped to it.
    memory_ceiling: int = 512 * 1024 * 1024

    @property
    def ceiling_pages(self) -> int:
        return max(1, min(metering.MAX_PAGES, self.memory_ceiling // abi.PAGE_SIZE))

    def fingerprint(self) -> str:
        text = (
            f"wasmer-{WASMER_VERSION}|cranelift|universal|"
            f"instrumentation-{metering.INSTRUMENTATION_VERSION}|pages={self.ceiling_pages}"
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class _Shape:
    """What the host needs to know of an instrumented module (cached beside it)."""

    table_minimums: tuple[int, ...]
    has_start: bool
    mutable_globals: tuple[str, ...]
    mutates_tables: bool

    @classmethod
    def of(cls, result: metering.Instrumented) -> _Shape:
        return cls(
            tuple(result.table_minimums),
            result.has_start,
            tuple(result.mutable_globals),
            result.mutates_tables,
        )


class WasmerModule(CompiledModule):
    """A compiled agent: its serialized wasmer artefact (threads deserialize their own)."""

    def __init__(self, sha256: str, info: abi.ModuleInfo, shape: _Shape, serialized: bytes) -> None:
        super().__init__(sha256, abi.declared_abi_version(info), info.export_names)
        self.info = info
        self.shape = shape
        self.serialized = serialized


# -------------------------------------------------------------------------
# Guest memory
# -------------------------------------------------------------------------


class _Memory:
    """Bounds-checked access to an instance's linear memory by address.

    The base address is taken once (through the buffer protocol, released at once:
    a wasmer ``Buffer`` must not be released from another thread) and stays valid while
    the instance lives: wasmer reserves a wasm32 memory's whole range up front
    ("static" memories), so growing never moves it. Copies are ``ctypes.memmove``, usable
    from any thread, which is how an instance's memory is copied to another thread.
    """

    __slots__ = ("base", "memory", "size_seen")

    def __init__(self, memory: wasmer.Memory | None) -> None:
        self.memory = memory
        self.base = 0
        self.size_seen = 0
        if memory is not None:
            view = memoryview(memory.buffer)
            anchor = ctypes.c_char.from_buffer(view)
            self.base = ctypes.addressof(anchor)
            del anchor
            view.release()
            self.size_seen = memory.data_size

    def size(self) -> int:
        """Current size (on the instance's thread; elsewhere the size last seen)."""
        memory = self.memory
        if memory is not None:
            self.size_seen = memory.data_size
        return self.size_seen

    def read(self, ptr: int, length: int) -> bytes:
        if length < 0 or ptr + length > self.size():
            raise GuestMemoryError(f"[{ptr}, {ptr + length}) is outside the agent's memory")
        return ctypes.string_at(self.base + ptr, length) if length else b""

    def write(self, ptr: int, data: bytes) -> None:
        if ptr + len(data) > self.size():
            raise GuestMemoryError(f"[{ptr}, {ptr + len(data)}) is outside the agent's memory")
        if data:
            ctypes.memmove(self.base + ptr, data, len(data))

    def release(self) -> None:
        self.memory = None
        self.base = 0
        self.size_seen = 0


# -------------------------------------------------------------------------
# Host functions, once per thread
# -------------------------------------------------------------------------


class _HostFunctionFailed(Exception):
    pass


class Linker:
    """The ``caxton``, ``env``, metering and plugin imports of one thread.

    The host functions are shared by every instance the thread runs; each finds its
    instance in :attr:`current`, which :meth:`WasmerInstance._call` sets (and restores,
    so an agent delivering to another agent from a host call is fine).
    """

    def __init__(self, store: wasmer.Store, extra: Sequence[HostFunction]) -> None:
        self.current: WasmerInstance | None = None
        self.extra_signatures: dict[tuple[str, str], abi.Signature] = {}
        self.namespaces: dict[str, dict[str, wasmer.Function]] = collections.defaultdict(dict)
        for (module, name), body in self._abi_bodies().items():
            self._define(store, module, name, abi.HOST_IMPORTS[(module, name)], body)
        self._define(
            store,
            metering.METERING_MODULE,
            metering.REFUEL,
            abi.Signature((), ("i64",)),
            lambda: self.current._refuel(),  # type: ignore[union-attr]
        )
        for function in extra:
            if function.module in (
                abi.HOST_MODULE,
                abi.LEGACY_MODULE,
                abi.WASI_MODULE,
                metering.METERING_MODULE,
            ):
                raise SandboxError(
                    f"host function {function.module}.{function.name}: the module "
                    f"'{function.module}' is reserved for the agent ABI; use another name"
                )
            signature = abi.Signature(tuple(function.params), tuple(function.results))
            self.extra_signatures[(function.module, function.name)] = signature
            self._define(store, function.module, function.name, signature, self._plugin(function))
        self.import_object = wasmer.ImportObject()
        for module, functions in self.namespaces.items():
            self.import_object.register(module, functions)

    def _define(
        self,
        store: wasmer.Store,
        module: str,
        name: str,
        signature: abi.Signature,
        body: Callable[..., Any],
    ) -> None:
        try:
            function_type = wasmer.FunctionType(
                [_VALUE_TYPES[t] for t in signature.params],
                [_VALUE_TYPES[t] for t in signature.results],
            )
        except KeyError as exc:
            raise SandboxError(
                f"host function {module}.{name}: unsupported value type {exc.args[0]!r}; "
                f"use i32, i64, f32 or f64"
            ) from None
        self.namespaces[module][name] = wasmer.Function(store, body, function_type)

    def _abi_bodies(self) -> dict[tuple[str, str], Callable[..., Any]]:
        clock = time.monotonic_ns

        def me() -> WasmerInstance:
            inst: WasmerInstance = self.current  # type: ignore[assignment]
            if clock() >= inst._deadline:
                inst.expire()
            return inst

        def send(ptr: int, length: int) -> int:
            inst = me()
            return inst.calls.send(inst.memory, ptr, length)

        def reply(ptr: int, length: int) -> int:
            inst = me()
            return inst.calls.reply(inst.memory, ptr, length)

        def log_(level: int, ptr: int, length: int) -> None:
            inst = me()
            inst.calls.log(inst.memory, level, ptr, length)

        def random(ptr: int, length: int) -> int:
            inst = me()
            return inst.calls.random(inst.memory, ptr, length)

        def kv_store(kptr: int, klen: int, vptr: int, vlen: int) -> int:
            inst = me()
            return inst.calls.kv_store(inst.memory, kptr, klen, vptr, vlen)

        def kv_load(kptr: int, klen: int, outptr: int, outcap: int) -> int:
            inst = me()
            return inst.calls.kv_load(inst.memory, kptr, klen, outptr, outcap)

        def kv_delete(kptr: int, klen: int) -> int:
            inst = me()
            return inst.calls.kv_delete(inst.memory, kptr, klen)

        def legacy_log(ptr: int, length: int) -> None:
            inst = me()
            inst.calls.legacy_log(inst.memory, ptr, length)

        def legacy_send(recipient: int, ptr: int, length: int) -> int:
            inst = me()
            return inst.calls.legacy_send_message(inst.memory, recipient, ptr, length)

        h, e = abi.HOST_MODULE, abi.LEGACY_MODULE
        return {
            (h, "send"): send,
            (h, "reply"): reply,
            (h, "log"): log_,
            (h, "now_us"): lambda: me().calls.now_us(),
            (h, "random"): random,
            (h, "kv_store"): kv_store,
            (h, "kv_load"): kv_load,
            (h, "kv_delete"): kv_delete,
            (h, "timer_set"): lambda delay, repeat: me().calls.timer_set(delay, repeat),
            (h, "timer_cancel"): lambda timer_id: me().calls.timer_cancel(timer_id),
            (e, "log"): legacy_log,
            (e, "get_time"): lambda: me().calls.legacy_get_time(),
            (e, "send_message"): legacy_send,
        }

    def _plugin(self, function: HostFunction) -> Callable[..., Any]:
        where = f"{function.module}.{function.name}"
        expected = len(function.results)

        def call(*args: Any) -> Any:
            inst = self.current
            assert inst is not None
            inst.check_deadline()
            try:
                out = function.func(MemoryHostCall(inst.agent_name, inst.host, inst.memory), *args)
            except Exception as exc:
                raise inst.host_failed(f"host function {where} failed: {exc}") from exc
            if not expected:
                return None
            outs = out if isinstance(out, tuple) else (out,)
            if len(outs) != expected:
                raise inst.host_failed(
                    f"host function {where} returned {len(outs)} values, expected {expected}"
                )
            return out

        return call


class _ThreadState:
    """What one thread has made: deserialized modules, linkers, pre-warmed instances."""

    def __init__(self) -> None:
        self.modules: dict[str, wasmer.Module] = {}
        self.linkers: dict[tuple[HostFunction, ...], Linker] = {}
        self.pools: dict[tuple[str, tuple[HostFunction, ...]], collections.deque[_Live]] = {}
        self.trampoline: wasmer.Module | None = None


@dataclass
class _Live:
    """A wasmer instance and its exports, not yet bound to an agent."""

    instance: wasmer.Instance
    linker: Linker
    funcs: dict[str, wasmer.Function]
    fuel: wasmer.Global
    memory_cap: wasmer.Global
    table_cap: wasmer.Global
    memory: wasmer.Memory | None
    mutable_globals: list[wasmer.Global]
    start: wasmer.Function | None


_CALLED_EXPORTS = (*abi.GUEST_EXPORTS, "_initialize")


def _bind(instance: wasmer.Instance, linker: Linker, shape: _Shape) -> _Live:
    exports = instance.exports

    def get(name: str) -> Any:
        try:
            return getattr(exports, name)
        except LookupError:
            return None

    return _Live(
        instance=instance,
        linker=linker,
        funcs={name: f for name in _CALLED_EXPORTS if (f := get(name)) is not None},
        fuel=get(metering.FUEL_GLOBAL),
        memory_cap=get(metering.MEMORY_CAP_GLOBAL),
        table_cap=get(metering.TABLE_CAP_GLOBAL),
        memory=get(metering.MEMORY_EXPORT),
        mutable_globals=[get(name) for name in shape.mutable_globals],
        start=get(metering.START_EXPORT) if shape.has_start else None,
    )


# -------------------------------------------------------------------------
# Instances
# -------------------------------------------------------------------------


class WasmerInstance(AgentInstance):
    """One agent instance. Not re-entrant: one call at a time. After any failure the
    instance is poisoned. Usable from any thread: wasmer objects are bound to the
    thread that made them, so the first call from another thread rebuilds the instance
    there (memory and globals copied; see docs/sandbox-wasmer.md for the limits)."""

    def __init__(
        self,
        runtime: WasmerRuntime,
        module: WasmerModule,
        live: _Live,
        *,
        agent_name: str,
        limits: ResourceLimits,
        host: AgentHostAPI,
        extra: tuple[HostFunction, ...],
        wasi: bool,
    ) -> None:
        self.runtime = runtime
        self.module = module
        self.agent_name = agent_name
        self.limits = limits
        self.host = host
        self.calls = AbiHostCalls(agent_name, host, limits)
        self._extra = extra
        self._wasi = wasi
        self._slice = min(limits.max_fuel, runtime.settings.fuel_slice)
        self._timeout_ns = limits.max_execution_time_ms * 1_000_000
        self._given = 0
        self._budget = 0
        self._deadline = 0
        self._stop: str | None = None
        self._poisoned: str | None = None
        self._host_failure: str | None = None
        self._busy = threading.Lock()
        self._close_requested = False
        #: Set while a call runs on the instance's own thread.
        self._here = False
        self._global_values: list[Any] = []
        self.last_fuel_used = 0
        self.total_fuel_used = 0
        self.memory = _Memory(None)
        self._live: _Live | None = None
        self._adopt(live)

    def _adopt(self, live: _Live) -> None:
        self._live = live
        # The per-thread state object identifies the thread: thread ids are reused once
        # a thread ends, while wasmer's binding to the thread that made an object is not.
        self._owner = self.runtime.thread_state()
        self._linker = live.linker
        funcs = live.funcs
        self._funcs = funcs
        self._alloc = funcs.get("alloc")
        self._handle = funcs.get("handle_message")
        self._dealloc = funcs.get("dealloc")
        self._fuel = live.fuel
        self._wasmer_memory = live.memory
        self._mutable_globals = live.mutable_globals
        self.memory.release()
        self.memory = _Memory(live.memory)
        live.memory_cap.value = min(
            self.limits.max_memory_bytes // abi.PAGE_SIZE, self.runtime.settings.ceiling_pages
        )
        live.table_cap.value = min(self.limits.max_table_elements, _MAX_I32)

    # -- what host functions use ---------------------------------------------------

    def host_failed(self, text: str) -> _HostFunctionFailed:
        self._host_failure = text
        return _HostFunctionFailed(text)

    def check_deadline(self) -> None:
        """For host functions: :meth:`expire` when the delivery's deadline has passed."""
        if time.monotonic_ns() >= self._deadline:
            self.expire()

    def expire(self) -> None:
        """Called from a host function once the deadline has passed: empty the fuel
        counter (keeping the accounting) so the guest's next charge asks for fuel and
        is stopped. A guest that spends its time in host calls burns little fuel, so
        without this it would reach the deadline check only after a whole slice."""
        left = self._fuel.value
        if left >= 0:
            self._fuel.value = -1
            self._given -= left + 1

    def _refuel(self) -> int:
        if time.monotonic_ns() >= self._deadline:
            self._stop = "timeout"
            return 0
        if self._budget <= 0:
            self._stop = "fuel"
            return 0
        grant = min(self._budget, self._slice)
        self._budget -= grant
        self._given += grant
        return grant

    # -- calling into the guest ------------------------------------------------------

    def _arm(self) -> None:
        grant = self._slice
        self._fuel.value = grant
        self._given = grant
        self._budget = self.limits.max_fuel - grant
        self._deadline = time.monotonic_ns() + self._timeout_ns
        self._stop = None

    def _account(self) -> None:
        used = self._given - self._fuel.value
        used = min(max(used, 0), self.limits.max_fuel)
        self.last_fuel_used = used
        self.total_fuel_used += used

    def _call(self, func: wasmer.Function, *args: int) -> Any:
        linker = self._linker
        previous = linker.current
        linker.current = self
        try:
            return func(*args)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # a wasmer panic is a BaseException: contain it too
            self._fail(exc)
        finally:
            linker.current = previous

    def _fail(self, exc: BaseException) -> None:
        self._account()
        detail = str(exc)
        stop, self._stop = self._stop, None
        host_failure, self._host_failure = self._host_failure, None
        if stop == "fuel":
            reason, text = "fuel", abi.FUEL_EXHAUSTED
        elif stop == "timeout":
            reason, text = "timeout", abi.timeout_message(self.limits.max_execution_time_ms)
        elif host_failure is not None:
            reason, text = "trap", host_failure
        elif "call stack exhausted" in detail:
            reason, text = "trap", abi.STACK_OVERFLOW
        elif self._memory_exhausted():
            reason, text = "memory", abi.memory_message(self.limits.max_memory_bytes)
        elif type(exc) is RuntimeError:
            reason, text = "trap", f"wasm trap: {_trap_summary(detail)}"
        else:
            log.error("agent %s: host call failed", self.agent_name, exc_info=exc)
            reason, text = "trap", f"host call failed: {exc!r}"
        self._raise(reason, text, detail)

    def _raise(self, reason: str, text: str, detail: str | None = None) -> None:
        self._poisoned = reason
        error = ExecutionFailed(text, reason=reason)
        error.details = (detail or text)[:4000]
        raise error

    def _memory_exhausted(self, wanted: int = abi.PAGE_SIZE) -> bool:
        return self.memory.size() + max(wanted, abi.PAGE_SIZE) > self.limits.max_memory_bytes

    def _check_usable(self) -> None:
        if self._poisoned is not None:
            raise ExecutionFailed(abi.POISONED.format(reason=self._poisoned), reason="abi")
        if self._live is None:
            raise ExecutionFailed("agent instance is closed", reason="abi")
        if self._owner is not self.runtime.thread_state():
            self._move_here()
        self._here = True

    def _enter(self) -> None:
        if not self._busy.acquire(blocking=False):
            raise ExecutionFailed(
                f"agent {self.agent_name} is already running a call; an instance takes one "
                f"call at a time",
                reason="abi",
            )

    def _leave(self) -> None:
        if self._here:
            # What a move to another thread needs, read while this thread can.
            self._here = False
            if self._wasmer_memory is not None:
                self.memory.size_seen = self._wasmer_memory.data_size
            if self._mutable_globals:
                self._global_values = [g.value for g in self._mutable_globals]
        self._busy.release()
        if self._close_requested:
            self.close()

    def _run(self, func: wasmer.Function | None, *args: int) -> None:
        if func is None:
            return
        self._enter()
        try:
            self._check_usable()
            self._arm()
            self._call(func, *args)
            self._account()
        finally:
            self._leave()

    def start_module(self) -> None:
        """Run the module's start function, then ``_initialize`` (WASI reactors)."""
        if self._live is not None and self._live.start is not None:
            self._run(self._live.start)
        self._run(self._funcs.get("_initialize"))

    def init(self) -> None:
        self._run(self._funcs.get("agent_init"))

    def shutdown(self) -> None:
        self._run(self._funcs.get("agent_shutdown"))

    def handle_timer(self, timer_id: int) -> None:
        self._run(self._funcs.get("handle_timer"), timer_id)

    def handle_message(self, message: bytes) -> int:
        self._enter()
        try:
            return self._deliver(message)
        finally:
            self._leave()

    def _deliver(self, message: bytes) -> int:
        self._check_usable()
        handle = self._handle
        if handle is None or self._alloc is None:
            raise ExecutionFailed(abi.NO_HANDLER, reason="abi")
        if type(message) is not bytes:
            message = bytes(message)
        size = len(message)
        if size > self.limits.max_message_bytes:
            raise ValidationError(abi.message_too_large(size, self.limits.max_message_bytes))
        self._arm()
        alloc, dealloc, memory = self._alloc, self._dealloc, self.memory
        status = ptr = 0
        usable = False
        # One binding of the host functions for the three calls.
        linker = self._linker
        previous = linker.current
        linker.current = self
        try:
            try:
                ptr = alloc(size) & 0xFFFFFFFF
                usable = ptr != 0 and ptr + size <= memory.size()
                if usable:
                    ctypes.memmove(memory.base + ptr, message, size)
                    status = int(handle(ptr, size))
                    if dealloc is not None:
                        dealloc(ptr, size)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # a wasmer panic is a BaseException: contain it
                self._fail(exc)
        finally:
            linker.current = previous
        self._account()
        if not usable:
            if self._memory_exhausted(size):
                self._raise("memory", abi.memory_message(self.limits.max_memory_bytes))
            self._raise(
                "abi",
                f"alloc({size}) returned {ptr}, which is not a usable buffer in the agent's memory",
            )
        return status

    def memory_size(self) -> int:
        if self._live is None:
            return 0
        if self._owner is not self.runtime.thread_state():
            return self.memory.size_seen
        return self.memory.size()

    @property
    def poisoned(self) -> str | None:
        return self._poisoned

    # -- moving to another thread -------------------------------------------------------

    def _move_here(self) -> None:
        """Rebuild this instance on the calling thread from a copy of its state."""
        if self._wasi:
            raise ExecutionFailed(
                f"agent {self.agent_name}: this wasmer instance has WASI state and was "
                f"created on another thread; wasmer objects cannot change threads, so call "
                f"it from the thread that created it",
                reason="abi",
            )
        if self.module.shape.mutates_tables:
            raise ExecutionFailed(
                f"agent {self.agent_name}: this wasmer instance changes its tables at run "
                f"time and was created on another thread; wasmer objects cannot change "
                f"threads, so call it from the thread that created it",
                reason="abi",
            )
        old = self.memory
        live = self.runtime.new_live(self.module, self._extra)
        if live.memory is not None and old.size_seen:
            pages = (old.size_seen - live.memory.data_size) // abi.PAGE_SIZE
            if pages > 0:
                live.memory.grow(pages)
            new = _Memory(live.memory)
            ctypes.memmove(new.base, old.base, old.size_seen)
        for target, value in zip(live.mutable_globals, self._global_values, strict=False):
            target.value = value
        self.runtime.stats["moved"] += 1
        self._adopt(live)

    def close(self) -> None:
        if self._live is None:
            return
        if not self._busy.acquire(blocking=False):
            self._close_requested = True
            return
        try:
            self.memory.release()
            self._funcs = {}
            self._alloc = self._handle = self._dealloc = None
            self._wasmer_memory = None
            self._mutable_globals = []
            self._live = None
        finally:
            self._busy.release()


def _trap_summary(detail: str) -> str:
    first = detail.strip().splitlines()[0] if detail.strip() else "unknown trap"
    return first.removeprefix("RuntimeError:").strip()


# -------------------------------------------------------------------------
# The runtime
# -------------------------------------------------------------------------


class WasmerRuntime:
    """Everything the driver owns. ``compile`` may run on any thread; instances are
    made and pooled per thread."""

    def __init__(self, settings: WasmerSettings, *, cache_dir: Path | None, pool_size: int) -> None:
        self.settings = settings
        self.cache_dir = cache_dir
        self.pool_size = pool_size
        self.store = wasmer.Store(wasmer.engine.Universal(Compiler))
        self._lock = threading.Lock()
        self._modules: dict[str, WasmerModule] = {}
        self._local = threading.local()
        self.stats = collections.Counter[str]()

    def thread_state(self) -> _ThreadState:
        state: _ThreadState | None = getattr(self._local, "state", None)
        if state is None:
            state = self._local.state = _ThreadState()
        return state

    # -- modules -------------------------------------------------------------------

    def compile(self, wasm: bytes) -> WasmerModule:
        wasm = bytes(wasm)
        sha = hashlib.sha256(wasm).hexdigest()
        with self._lock:
            cached = self._modules.get(sha)
        if cached is not None:
            self.stats["compile_memory_hit"] += 1
            return cached
        info = abi.parse_module(wasm)
        abi.check_module(info)
        loaded = self._load_cached(sha)
        if loaded is None:
            shape, serialized = self._compile(wasm)
            self._store_cached(sha, shape, serialized)
        else:
            shape, serialized = loaded
        compiled = WasmerModule(sha, info, shape, serialized)
        with self._lock:
            return self._modules.setdefault(sha, compiled)

    def _compile(self, wasm: bytes) -> tuple[_Shape, bytes]:
        if not wasmer.Module.validate(self.store, wasm):
            try:
                wasmer.Module(self.store, wasm)
            except Exception as exc:
                raise ModuleInvalid(
                    f"invalid WebAssembly module: {first_line(exc)}", details=str(exc)
                ) from None
        result = metering.instrument(wasm, max_memory_pages=self.settings.ceiling_pages)
        try:
            module = wasmer.Module(self.store, result.wasm)
        except Exception as exc:
            raise SandboxError(
                f"wasmer could not compile the instrumented module: {first_line(exc)}",
                details=str(exc),
            ) from None
        self.stats["compile"] += 1
        return _Shape.of(result), bytes(module.serialize())

    def _cache_path(self, sha: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{sha}-{self.settings.fingerprint()}.wasmer"

    def _load_cached(self, sha: str) -> tuple[_Shape, bytes] | None:
        path = self._cache_path(sha)
        if path is None or not path.is_file():
            return None
        try:
            data = path.read_bytes()
            (length,) = struct.unpack_from("<I", data)
            fields = json.loads(data[4 : 4 + length])
            shape = _Shape(
                tuple(fields["table_minimums"]),
                bool(fields["has_start"]),
                tuple(fields["mutable_globals"]),
                bool(fields["mutates_tables"]),
            )
            serialized = data[4 + length :]
            wasmer.Module.deserialize(self.store, serialized)  # usable?
        except Exception as exc:
            log.warning("ignoring unusable cached module %s: %s", path, first_line(exc))
            return None
        self.stats["compile_disk_hit"] += 1
        return shape, serialized

    def _store_cached(self, sha: str, shape: _Shape, serialized: bytes) -> None:
        path = self._cache_path(sha)
        if path is None:
            return
        header = json.dumps(
            {
                "table_minimums": list(shape.table_minimums),
                "has_start": shape.has_start,
                "mutable_globals": list(shape.mutable_globals),
                "mutates_tables": shape.mutates_tables,
            }
        ).encode()
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(struct.pack("<I", len(header)) + header + serialized)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot write the module cache %s: %s", path, exc)

    def _module_here(self, module: WasmerModule) -> wasmer.Module:
        state = self.thread_state()
        found = state.modules.get(module.sha256)
        if found is None:
            found = state.modules[module.sha256] = wasmer.Module.deserialize(
                self.store, module.serialized
            )
        return found

    def _trampoline_here(self) -> wasmer.Module:
        state = self.thread_state()
        if state.trampoline is None:
            from caxton_sandbox_wasmer.wasi import trampoline_wat

            state.trampoline = wasmer.Module(
                self.store, wasmer.wat2wasm(trampoline_wat(self.store))
            )
        return state.trampoline

    def linker(self, extra: tuple[HostFunction, ...]) -> Linker:
        state = self.thread_state()
        found = state.linkers.get(extra)
        if found is None:
            found = state.linkers[extra] = Linker(self.store, extra)
        return found

    # -- instances ---------------------------------------------------------------------

    def new_live(
        self,
        module: WasmerModule,
        extra: tuple[HostFunction, ...],
        import_object: wasmer.ImportObject | None = None,
        linker: Linker | None = None,
    ) -> _Live:
        linker = linker or self.linker(extra)
        instance = wasmer.Instance(self._module_here(module), import_object or linker.import_object)
        return _bind(instance, linker, module.shape)

    def pooled(self, sha256: str) -> int:
        state = self.thread_state()
        return sum(len(pool) for (sha, _), pool in state.pools.items() if sha == sha256)

    def fill_pool(self, module: WasmerModule, extra: tuple[HostFunction, ...] = ()) -> None:
        """Pre-warm instances of ``module`` for the calling thread."""
        if self.pool_size <= 0 or module.shape.has_start or abi.wasi_imports(module.info):
            return
        pool = self.thread_state().pools.setdefault((module.sha256, extra), collections.deque())
        while len(pool) < self.pool_size:
            pool.append(self.new_live(module, extra))
            self.stats["pool_filled"] += 1

    def instantiate(
        self,
        module: WasmerModule,
        *,
        agent_name: str,
        limits: ResourceLimits,
        host: AgentHostAPI,
        capabilities: WasiCapabilities,
        extra_functions: Sequence[HostFunction],
    ) -> WasmerInstance:
        if not isinstance(module, WasmerModule):
            raise SandboxError(
                f"module {module.sha256[:12]} was compiled by another sandbox; compile it "
                f"with this one"
            )
        extra = tuple(extra_functions)
        linker = self.linker(extra)
        abi.check_imports(module.info, linker.extra_signatures)
        wasi_names = abi.wasi_imports(module.info)
        if wasi_names and not capabilities.enabled:
            names = ", ".join(wasi_names[:5])
            raise AbiMismatch(
                f"the module imports WASI functions ({names}) but this agent has no WASI "
                f"capabilities; grant them at deploy time or build the agent without WASI"
            )
        self._check_initial_sizes(module, limits)
        live: _Live | None = None
        wasi = None
        if capabilities.enabled:
            from caxton_sandbox_wasmer.wasi import WasiImports

            wasi = WasiImports(self.store, capabilities, agent_name, host, linker)
        else:
            pool = self.thread_state().pools.get((module.sha256, extra))
            if pool:
                live = pool.popleft()
                self.stats["pool_hit"] += 1
        if live is None:
            self.stats["instantiate"] += 1
            try:
                live = self.new_live(
                    module, extra, wasi.import_object if wasi else None, linker=linker
                )
            except Exception as exc:
                raise _instantiate_failure(exc) from None
        instance = WasmerInstance(
            self,
            module,
            live,
            agent_name=agent_name,
            limits=limits,
            host=host,
            extra=extra,
            wasi=wasi is not None,
        )
        if wasi is not None:
            try:
                wasi.bind(instance, self._trampoline_here())
            except BaseException:
                instance.close()
                raise
        try:
            instance.start_module()
        except BaseException:
            instance.close()
            raise
        return instance

    def _check_initial_sizes(self, module: WasmerModule, limits: ResourceLimits) -> None:
        memory = module.info.memories[0] if module.info.memories else None
        if memory is not None and memory.minimum_bytes > limits.max_memory_bytes:
            raise ExecutionFailed(
                f"the module's initial memory ({memory.minimum_bytes} bytes) does not fit "
                f"max_memory_bytes ({limits.max_memory_bytes} bytes)",
                reason="memory",
            )
        for minimum in module.shape.table_minimums:
            if minimum > limits.max_table_elements:
                raise ExecutionFailed(
                    f"the module's initial table ({minimum} elements) does not fit "
                    f"max_table_elements ({limits.max_table_elements})",
                    reason="memory",
                )


def _instantiate_failure(exc: Exception) -> CaxtonErrorLike:
    text = str(exc)
    if "importing" in text or "import" in text.split(":")[0]:
        return AbiMismatch(f"cannot link the module: {first_line(exc)}", details=text)
    error = ExecutionFailed(f"instantiation failed: {_trap_summary(text)}", reason="trap")
    error.details = text
    return error


CaxtonErrorLike = AbiMismatch | ExecutionFailed
