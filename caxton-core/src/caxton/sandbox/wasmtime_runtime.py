"""The wasmtime sandbox's machinery: engine, module cache, linkers, pool, instances.

Imported by :class:`caxton.sandbox.wasmtime_sandbox.WasmtimeSandbox` when the driver is
constructed (it loads the wasmtime native library). See docs/sandbox.md for the design:
one engine with fuel and epoch interruption, a disk cache of compiled modules, one
pre-linked :class:`wasmtime.InstancePre` per module, a pool of pre-warmed instances, and
a message path through the C API's unchecked calls.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import hashlib
import importlib.metadata
import itertools
import logging
import math
import os
import queue
import tempfile
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import wasmtime

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
from caxton.sandbox import _capi as capi
from caxton.sandbox import abi
from caxton.sandbox.hostcalls import AbiHostCalls, GuestMemoryError

log = logging.getLogger("caxton.sandbox.wasmtime")

WASMTIME_VERSION = importlib.metadata.version("wasmtime")


@dataclass(frozen=True)
class EngineSettings:
    """The engine-wide settings of docs/sandbox.md (``[sandbox.wasmtime]``)."""

    epoch_tick_s: float = 0.01
    max_wasm_stack: int = 1024 * 1024
    memory_reservation: int = 512 * 1024 * 1024
    memory_guard_size: int = 64 * 1024
    memory_reservation_for_growth: int = 64 * 1024 * 1024
    opt_level: str = "speed"
    parallel_compilation: bool = True

    def fingerprint(self) -> str:
        """What a serialized module depends on besides its bytes."""
        text = (
            f"wasmtime-{WASMTIME_VERSION}|stack={self.max_wasm_stack}|"
            f"res={self.memory_reservation}|guard={self.memory_guard_size}|"
            f"growth={self.memory_reservation_for_growth}|"
            f"opt={self.opt_level}|fuel|epoch"
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def build_engine(self) -> wasmtime.Engine:
        config = wasmtime.Config()
        config.consume_fuel = True
        config.epoch_interruption = True
        config.max_wasm_stack = self.max_wasm_stack
        config.memory_reservation = self.memory_reservation
        config.memory_guard_size = self.memory_guard_size
        config.memory_reservation_for_growth = self.memory_reservation_for_growth
        config.cranelift_opt_level = self.opt_level
        config.parallel_compilation = self.parallel_compilation
        return wasmtime.Engine(config)


class WasmtimeModule(CompiledModule):
    """A compiled module: the wasmtime :class:`wasmtime.Module` and what the ABI read."""

    def __init__(self, sha256: str, info: abi.ModuleInfo, module: wasmtime.Module) -> None:
        super().__init__(sha256, abi.declared_abi_version(info), info.export_names)
        self.info = info
        self.wasmtime_module = module


# -------------------------------------------------------------------------
# Host functions: the ABI imports as unchecked C callbacks
# -------------------------------------------------------------------------

#: Live instances by the id stored as their Store's data; host callbacks find their
#: instance here. Weak, so a forgotten instance still gets collected.
_LIVE: weakref.WeakValueDictionary[int, WasmtimeInstance] = weakref.WeakValueDictionary()
_ids = itertools.count(1)

Binder = Callable[["WasmtimeInstance", int, Any], None]


def _abi_binders() -> dict[tuple[str, str], Binder]:
    def send(inst: WasmtimeInstance, ctx: int, a: Any) -> None:
        a[0].i32 = inst.calls.send(inst.guest_memory(ctx), a[0].i32, a[1].i32)

    def reply(inst: WasmtimeInstance, ctx: int, a: Any) -> None:
        a[0].i32 = inst.calls.reply(inst.guest_memory(ctx), a[0].i32, a[1].i32)

    def log_(inst: WasmtimeInstance, ctx: int, a: Any) -> None:
        inst.calls.log(inst.guest_memory(ctx), a[0].i32, a[1].i32, a[2].i32)

    def now_us(inst: WasmtimeInstance, ctx: int, a: Any) -> None:
        a[0].i64 = inst.calls.now_us()

    def random(inst: WasmtimeInstance, ctx: int, a: Any) -> None:
        a[0].i32 = inst.calls.random(inst.guest_memory(ctx), a[0].i32, a[1].i32)

    def kv_store(inst: WasmtimeInstance, ctx: int, a: Any) -> None:
        a[0].i32 = inst.calls.kv_store(
            inst.guest_memory(ctx), a[0].i32, a[1].i32, a[2].i32, a[3].i32
        )

    def kv_load(inst: WasmtimeInstance, ctx: int, a: Any) -> None:
        a[0].i32 = inst.calls.kv_load(
            inst.guest_memory(ctx), a[0].i32, a[1].i32, a[2].i32, a[3].i32
        )

    def kv_delete(inst: WasmtimeInstance, ctx: int, a: Any) -> None:
        a[0].i32 = inst.calls.kv_delete(inst.guest_memory(ctx), a[0].i32, a[1].i32)

    def timer_set(inst: WasmtimeInstance, ctx: int, a: Any) -> None:
        a[0].i64 = inst.calls.timer_set(a[0].i64, a[1].i32)

    def timer_cancel(inst: WasmtimeInstance, ctx: int, a: Any) -> None:
        a[0].i32 = inst.calls.timer_cancel(a[0].i64)

    def legacy_log(inst: WasmtimeInstance, ctx: int, a: Any) -> None:
        inst.calls.legacy_log(inst.guest_memory(ctx), a[0].i32, a[1].i32)

    def legacy_get_time(inst: WasmtimeInstance, ctx: int, a: Any) -> None:
        a[0].i64 = inst.calls.legacy_get_time()

    def legacy_send(inst: WasmtimeInstance, ctx: int, a: Any) -> None:
        a[0].i32 = inst.calls.legacy_send_message(
            inst.guest_memory(ctx), a[0].i32, a[1].i32, a[2].i32
        )

    h, e = abi.HOST_MODULE, abi.LEGACY_MODULE
    return {
        (h, "send"): send,
        (h, "reply"): reply,
        (h, "log"): log_,
        (h, "now_us"): now_us,
        (h, "random"): random,
        (h, "kv_store"): kv_store,
        (h, "kv_load"): kv_load,
        (h, "kv_delete"): kv_delete,
        (h, "timer_set"): timer_set,
        (h, "timer_cancel"): timer_cancel,
        (e, "log"): legacy_log,
        (e, "get_time"): legacy_get_time,
        (e, "send_message"): legacy_send,
    }


_RAW_FIELDS = {"i32": "i32", "i64": "i64", "f32": "f32", "f64": "f64"}


def _plugin_binder(function: HostFunction) -> Binder:
    params = [_RAW_FIELDS[t] for t in function.params]
    results = [_RAW_FIELDS[t] for t in function.results]
    where = f"{function.module}.{function.name}"

    def bind(inst: WasmtimeInstance, ctx: int, a: Any) -> None:
        values = [getattr(a[i], kind) for i, kind in enumerate(params)]
        try:
            out = function.func(inst.host_call(ctx), *values)
        except Exception as exc:
            raise _HostFunctionFailed(f"host function {where} failed: {exc}") from exc
        if not results:
            return
        outs = out if isinstance(out, tuple) else (out,)
        if len(outs) != len(results):
            raise _HostFunctionFailed(
                f"host function {where} returned {len(outs)} values, expected {len(results)}"
            )
        for i, (kind, value) in enumerate(zip(results, outs, strict=True)):
            setattr(a[i], kind, value)

    return bind


class _HostFunctionFailed(Exception):
    pass


def _make_callback(bind: Binder) -> Any:
    caller_context = capi.caller_context
    context_get_data = capi.context_get_data
    live = _LIVE

    def callback(env: int | None, caller: int, args: Any, nargs: int) -> int:
        ctx = caller_context(caller)
        inst = live.get(context_get_data(ctx) or 0)
        if inst is None:
            return capi.new_trap("caxton: host function called before the agent was bound")
        try:
            bind(inst, ctx, args)
        except BaseException as exc:  # never let an exception cross into wasm frames
            return inst.host_fault(exc)
        return 0

    return capi.UncheckedCallback(callback)


def _valtype(name: str) -> wasmtime.ValType:
    if name not in _RAW_FIELDS:
        raise SandboxError(
            f"unsupported host function value type {name!r}: use i32, i64, f32 or f64"
        )
    factory: Callable[[], wasmtime.ValType] = getattr(wasmtime.ValType, name)
    return factory()


class HostLinker:
    """A :class:`wasmtime.Linker` with the ABI imports (+ WASI, + plugin functions)."""

    _abi_callbacks: dict[tuple[str, str], Any] | None = None

    def __init__(
        self, engine: wasmtime.Engine, *, wasi: bool, extra: Sequence[HostFunction]
    ) -> None:
        self.linker = wasmtime.Linker(engine)
        self.wasi = wasi
        self.extra_signatures: dict[tuple[str, str], abi.Signature] = {}
        # The CFUNCTYPE objects must outlive the linker and every instance it made.
        self._keep: list[Any] = []
        if wasi:
            self.linker.define_wasi()
        if HostLinker._abi_callbacks is None:
            HostLinker._abi_callbacks = {
                key: _make_callback(bind) for key, bind in _abi_binders().items()
            }
        for (module, name), callback in HostLinker._abi_callbacks.items():
            self._define(module, name, abi.HOST_IMPORTS[(module, name)], callback)
        for function in extra:
            if function.module in (abi.HOST_MODULE, abi.LEGACY_MODULE, abi.WASI_MODULE):
                raise SandboxError(
                    f"host function {function.module}.{function.name}: the module "
                    f"'{function.module}' is reserved for the agent ABI; use another name"
                )
            signature = abi.Signature(tuple(function.params), tuple(function.results))
            for value_type in (*signature.params, *signature.results):
                _valtype(value_type)
            self.extra_signatures[(function.module, function.name)] = signature
            callback = _make_callback(_plugin_binder(function))
            self._keep.append(callback)
            self._define(function.module, function.name, signature, callback)

    def _define(self, module: str, name: str, sig: abi.Signature, callback: Any) -> None:
        functype = wasmtime.FuncType(
            [_valtype(t) for t in sig.params], [_valtype(t) for t in sig.results]
        )
        self._keep.append(functype)
        m, n = module.encode(), name.encode()
        err = capi.linker_define_func_unchecked(
            ctypes.cast(self.linker.ptr(), ctypes.c_void_p),
            m,
            len(m),
            n,
            len(n),
            ctypes.cast(functype.ptr(), ctypes.c_void_p),
            callback,
            None,
            None,
        )
        if err:
            raise SandboxError(
                f"cannot define host function {module}.{name}: {capi.error_text(err)}"
            )


# -------------------------------------------------------------------------
# Instances
# -------------------------------------------------------------------------


#: Exports the host calls, in the order they are looked up.
_HOST_CALLED_EXPORTS = (*abi.GUEST_EXPORTS, "_initialize", "memory")


def exports_to_bind(info: abi.ModuleInfo) -> tuple[str, ...]:
    return tuple(name for name in _HOST_CALLED_EXPORTS if name in info.exports)


class _Exports:
    """Addresses of one instance's exports, looked up once. They point into ``_items``
    and are valid while the instance's store is alive."""

    __slots__ = ("_items", "funcs", "memory")

    def __init__(
        self, store: wasmtime.Store, instance: wasmtime.Instance, names: tuple[str, ...]
    ) -> None:
        ctx = capi.context_address(store)
        inst_addr = capi.address(instance._instance)
        self.funcs: dict[str, int] = {}
        self.memory = 0
        self._items: list[Any] = []
        for name in names:
            item = capi.ExternStruct()
            raw = name.encode()
            if not capi.instance_export_get(ctx, inst_addr, raw, len(raw), capi.address(item)):
                continue
            self._items.append(item)
            kind = int(cast(Any, item).kind)
            if kind == capi.EXTERN_FUNC:
                self.funcs[name] = capi.address(item.of.func)
            elif kind == capi.EXTERN_MEMORY and name == "memory":
                self.memory = capi.address(item.of.memory)


class _Live:
    """A store and its instance: the unit the pool holds."""

    __slots__ = ("exports", "instance", "store")

    def __init__(
        self, store: wasmtime.Store, instance: wasmtime.Instance, names: tuple[str, ...]
    ) -> None:
        self.store = store
        self.instance = instance
        self.exports = _Exports(store, instance, names)

    def memory_size(self) -> int:
        if not self.exports.memory:
            return 0
        return int(capi.memory_data_size(capi.context_address(self.store), self.exports.memory))


class _GuestMemory:
    """Bounds-checked access to an instance's memory from inside a host call."""

    __slots__ = ("ctx", "mem")

    def __init__(self, mem: int) -> None:
        self.ctx = 0
        self.mem = mem

    def size(self) -> int:
        if not self.mem:
            return 0
        return int(capi.memory_data_size(self.ctx, self.mem))

    def read(self, ptr: int, length: int) -> bytes:
        if ptr + length > self.size():
            raise GuestMemoryError(f"[{ptr}, {ptr + length}) is outside the agent's memory")
        base = capi.memory_data(self.ctx, self.mem) or 0
        return capi.string_at(base + ptr, length) if length else b""

    def write(self, ptr: int, data: bytes) -> None:
        if ptr + len(data) > self.size():
            raise GuestMemoryError(f"[{ptr}, {ptr + len(data)}) is outside the agent's memory")
        if data:
            # Re-read the base every time: memory.grow may have moved it.
            capi.memmove((capi.memory_data(self.ctx, self.mem) or 0) + ptr, data, len(data))


class _HostCall:
    """The :class:`caxton.drivers.sandbox.HostCall` handed to plugin host functions."""

    def __init__(self, agent_name: str, host: AgentHostAPI, memory: _GuestMemory) -> None:
        self.agent_name = agent_name
        self.host = host
        self._memory = memory

    def read_memory(self, ptr: int, length: int) -> bytes:
        try:
            return self._memory.read(ptr & 0xFFFFFFFF, length)
        except GuestMemoryError as exc:
            raise ValidationError(str(exc)) from None

    def write_memory(self, ptr: int, data: bytes) -> None:
        try:
            self._memory.write(ptr & 0xFFFFFFFF, data)
        except GuestMemoryError as exc:
            raise ValidationError(str(exc)) from None


class WasmtimeInstance(AgentInstance):
    """One agent instance. Not re-entrant: one call at a time (the agent runtime
    serialises deliveries per agent). After any failure the instance is poisoned."""

    def __init__(
        self,
        live: _Live,
        *,
        agent_name: str,
        limits: ResourceLimits,
        host: AgentHostAPI,
        epoch_tick_s: float,
    ) -> None:
        # The Store owns everything the addresses below point into: keep it referenced
        # for as long as this object may call into it (a dangling context aborts).
        self._live: _Live | None = live
        self._store = live.store
        self._ctx = capi.context_address(live.store)
        self.agent_name = agent_name
        self.limits = limits
        self.host = host
        self.calls = AbiHostCalls(agent_name, host, limits)
        funcs = live.exports.funcs
        self._funcs = funcs
        self._alloc = funcs.get("alloc", 0)
        self._handle = funcs.get("handle_message", 0)
        self._dealloc = funcs.get("dealloc", 0)
        self._mem = live.exports.memory
        self._guest = _GuestMemory(self._mem)
        self._args = (capi.ValRaw * 4)()
        self._args_addr = capi.address(self._args)
        self._trap = ctypes.c_void_p()
        self._trap_addr = capi.address(self._trap)
        self._fuel_left = ctypes.c_uint64()
        self._fuel_left_addr = capi.address(self._fuel_left)
        # The deadline is counted in epoch ticks from when it is armed; one extra tick
        # makes sure a delivery gets at least its full wall time.
        self._deadline_ticks = math.ceil(limits.max_execution_time_ms / 1000 / epoch_tick_s) + 1
        self._poisoned: str | None = None
        self._host_failure: tuple[str, str] | None = None
        # Held while the guest runs (ctypes releases the GIL meanwhile): a concurrent or
        # re-entrant call is refused, and close() waits for the running call instead
        # of freeing the store under it.
        self._busy = threading.Lock()
        self._close_requested = False
        self.last_fuel_used = 0
        self.total_fuel_used = 0
        self._id = next(_ids)
        _LIVE[self._id] = self
        capi.context_set_data(self._ctx, self._id)
        live.store.set_limits(
            memory_size=limits.max_memory_bytes,
            table_elements=limits.max_table_elements,
            instances=limits.max_instances,
        )

    # -- what host callbacks use --------------------------------------------------

    def guest_memory(self, ctx: int) -> _GuestMemory:
        guest = self._guest
        guest.ctx = ctx
        return guest

    def host_call(self, ctx: int) -> _HostCall:
        return _HostCall(self.agent_name, self.host, self.guest_memory(ctx))

    def host_fault(self, exc: BaseException) -> int:
        if isinstance(exc, _HostFunctionFailed):
            self._host_failure = ("trap", str(exc))
        else:
            log.error("agent %s: host call failed", self.agent_name, exc_info=exc)
            self._host_failure = ("trap", f"host call failed: {exc!r}")
        return capi.new_trap(self._host_failure[1])

    # -- calling into the guest ------------------------------------------------------

    def _check_usable(self) -> None:
        if self._poisoned is not None:
            raise ExecutionFailed(abi.POISONED.format(reason=self._poisoned), reason="abi")
        if self._live is None:
            raise ExecutionFailed("agent instance is closed", reason="abi")

    def _arm(self) -> None:
        err = capi.context_set_fuel(self._ctx, self.limits.max_fuel)
        if err:
            raise SandboxError(f"cannot set fuel: {capi.error_text(err)}")
        capi.context_set_epoch_deadline(self._ctx, self._deadline_ticks)

    def _account(self) -> None:
        capi.context_get_fuel(self._ctx, self._fuel_left_addr)
        used = self.limits.max_fuel - self._fuel_left.value
        self.last_fuel_used = used
        self.total_fuel_used += used

    def _call(self, func: int, slots: int) -> None:
        err = capi.func_call_unchecked(self._ctx, func, self._args_addr, slots, self._trap_addr)
        if err or self._trap.value:
            self._fail(err)

    def _fail(self, err: int | None) -> None:
        trap = self._trap.value
        self._trap.value = None
        self._account()
        code: int | None = None
        if err:
            detail = capi.error_text(err)
        elif trap:
            code, detail = capi.trap_details(trap)
        else:  # pragma: no cover - _fail is only called with one of them set
            detail = "unknown failure"
        host_failure, self._host_failure = self._host_failure, None
        if code == capi.TRAP_OUT_OF_FUEL:
            reason, text = "fuel", abi.FUEL_EXHAUSTED
        elif code == capi.TRAP_INTERRUPT:
            reason, text = "timeout", abi.timeout_message(self.limits.max_execution_time_ms)
        elif host_failure is not None:
            reason, text = host_failure
        elif code == capi.TRAP_STACK_OVERFLOW:
            reason, text = "trap", abi.STACK_OVERFLOW
        elif self._memory_exhausted():
            reason, text = "memory", abi.memory_message(self.limits.max_memory_bytes)
        else:
            reason, text = "trap", f"wasm trap: {_trap_summary(detail)}"
        self._raise(reason, text, detail)

    def _raise(self, reason: str, text: str, detail: str | None = None) -> None:
        self._poisoned = reason
        error = ExecutionFailed(text, reason=reason)
        error.details = detail or text
        raise error

    def _memory_exhausted(self, wanted: int = abi.PAGE_SIZE) -> bool:
        """True when the memory cannot grow by ``wanted`` bytes under the limit."""
        return self.memory_size() + max(wanted, abi.PAGE_SIZE) > self.limits.max_memory_bytes

    def _enter(self) -> None:
        if not self._busy.acquire(blocking=False):
            raise ExecutionFailed(
                f"agent {self.agent_name} is already running a call; an instance takes one "
                f"call at a time",
                reason="abi",
            )

    def _leave(self) -> None:
        self._busy.release()
        if self._close_requested:
            self.close()

    def _run_export(self, name: str) -> None:
        func = self._funcs.get(name)
        if func is None:
            return
        self._enter()
        try:
            self._check_usable()
            self._arm()
            self._call(func, 0)
            self._account()
        finally:
            self._leave()

    def initialize(self) -> None:
        """Run the WASI reactor constructor ``_initialize`` (before anything else)."""
        self._run_export("_initialize")

    def init(self) -> None:
        self._run_export("agent_init")

    def shutdown(self) -> None:
        self._run_export("agent_shutdown")

    def handle_timer(self, timer_id: int) -> None:
        func = self._funcs.get("handle_timer")
        if func is None:
            return
        self._enter()
        try:
            self._check_usable()
            self._arm()
            self._args[0].i64 = timer_id
            self._call(func, 1)
            self._account()
        finally:
            self._leave()

    def handle_message(self, message: bytes) -> int:
        self._enter()
        try:
            return self._deliver(message)
        finally:
            self._leave()

    def _deliver(self, message: bytes) -> int:
        if self._poisoned is not None or self._live is None:
            self._check_usable()
        if not self._handle:
            raise ExecutionFailed(abi.NO_HANDLER, reason="abi")
        if type(message) is not bytes:
            message = bytes(message)
        size = len(message)
        if size > self.limits.max_message_bytes:
            raise ValidationError(abi.message_too_large(size, self.limits.max_message_bytes))
        ctx = self._ctx
        args = self._args
        self._arm()
        args[0].i32 = size
        self._call(self._alloc, 1)
        ptr = args[0].i32 & 0xFFFFFFFF
        # alloc may have grown (and moved) the memory: read base and size now.
        if ptr == 0 or ptr + size > capi.memory_data_size(ctx, self._mem):
            self._account()
            if self._memory_exhausted(size):
                self._raise("memory", abi.memory_message(self.limits.max_memory_bytes))
            self._raise(
                "abi",
                f"alloc({size}) returned {ptr}, which is not a usable buffer in the agent's memory",
            )
        capi.memmove(capi.memory_data(ctx, self._mem) + ptr, message, size)
        args[0].i32 = ptr
        args[1].i32 = size
        self._call(self._handle, 2)
        status = int(args[0].i32)
        if self._dealloc:
            args[0].i32 = ptr
            args[1].i32 = size
            self._call(self._dealloc, 2)
        self._account()
        return status

    def memory_size(self) -> int:
        if not self._mem or self._live is None:
            return 0
        return int(capi.memory_data_size(self._ctx, self._mem))

    @property
    def poisoned(self) -> str | None:
        """The reason of the failure that made this instance unusable, or None."""
        return self._poisoned

    def close(self) -> None:
        if self._live is None:
            return
        if not self._busy.acquire(blocking=False):
            # A call is running (another thread, or a host function of this very
            # instance): freeing the store now would pull it from under the guest.
            self._close_requested = True
            return
        try:
            self._free()
        finally:
            self._busy.release()

    def _free(self) -> None:
        if self._live is None:
            return
        _LIVE.pop(self._id, None)
        capi.context_set_data(self._ctx, None)
        self._funcs = {}
        self._alloc = self._handle = self._dealloc = self._mem = 0
        self._live = None
        self._ctx = 0
        # Dropping the last reference frees the store and everything in it.
        del self._store


def _trap_summary(detail: str) -> str:
    lines = [line.strip() for line in detail.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("wasm trap:"):
            return line[len("wasm trap:") :].strip()
    return lines[-1] if lines else "unknown trap"


# -------------------------------------------------------------------------
# The runtime: engine, caches, pool, epoch ticker
# -------------------------------------------------------------------------


@dataclass(frozen=True)
class _TemplateKey:
    sha256: str
    linker: tuple[bool, tuple[HostFunction, ...]]


class _Template:
    def __init__(self, module: WasmtimeModule, pre: wasmtime.InstancePre) -> None:
        self.module = module
        self.pre = pre
        self.exports = exports_to_bind(module.info)


class WasmtimeRuntime:
    """Everything the driver owns. Thread-safe: compile/instantiate may be called from
    several threads; the epoch ticker and the pool filler run in their own threads."""

    def __init__(
        self,
        settings: EngineSettings,
        *,
        cache_dir: Path | None,
        pool_size: int,
        default_fuel: int = 10_000_000,
    ) -> None:
        self.settings = settings
        self.engine = settings.build_engine()
        self.cache_dir = cache_dir
        self.pool_size = pool_size
        self.default_fuel = default_fuel
        self._engine_ptr = ctypes.cast(self.engine.ptr(), ctypes.c_void_p).value
        self._lock = threading.RLock()
        self._modules: dict[str, WasmtimeModule] = {}
        self._linkers: dict[tuple[bool, tuple[HostFunction, ...]], HostLinker] = {}
        self._templates: dict[_TemplateKey, _Template] = {}
        self._pools: dict[_TemplateKey, collections.deque[_Live]] = {}
        self._default_extra: tuple[HostFunction, ...] = ()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._filler: threading.Thread | None = None
        self._fill_requests: queue.SimpleQueue[_TemplateKey | None] = queue.SimpleQueue()
        self.stats = collections.Counter[str]()

    # -- threads ---------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._ticker is not None:
                return
            self._stop.clear()
            self._ticker = threading.Thread(
                target=self._tick, name="caxton-wasmtime-epoch", daemon=True
            )
            self._ticker.start()
            if self.pool_size > 0:
                self._filler = threading.Thread(
                    target=self._fill, name="caxton-wasmtime-pool", daemon=True
                )
                self._filler.start()

    def close(self) -> None:
        with self._lock:
            ticker, filler = self._ticker, self._filler
            self._ticker = self._filler = None
            self._stop.set()
            self._fill_requests.put(None)
        for thread in (ticker, filler):
            if thread is not None:
                thread.join(timeout=5)
        with self._lock:
            self._pools.clear()

    def _tick(self) -> None:
        increment, engine, interval = (
            capi.engine_increment_epoch,
            self._engine_ptr,
            (self.settings.epoch_tick_s),
        )
        while not self._stop.wait(interval):
            increment(engine)

    def _fill(self) -> None:
        while not self._stop.is_set():
            key = self._fill_requests.get()
            if key is None:
                return
            try:
                self._top_up(key)
            except Exception:
                log.exception("pre-warming instances of module %s failed", key.sha256[:12])

    def _top_up(self, key: _TemplateKey) -> None:
        with self._lock:
            template = self._templates.get(key)
            pool = self._pools.setdefault(key, collections.deque())
        if template is None:
            return
        while len(pool) < self.pool_size and not self._stop.is_set():
            pool.append(self._new_live(template, None))
            self.stats["pool_filled"] += 1

    # -- modules ----------------------------------------------------------------------

    def compile(self, wasm: bytes) -> WasmtimeModule:
        wasm = bytes(wasm)
        sha = hashlib.sha256(wasm).hexdigest()
        with self._lock:
            cached = self._modules.get(sha)
        if cached is not None:
            self.stats["compile_memory_hit"] += 1
            return cached
        info = abi.parse_module(wasm)
        abi.check_module(info)
        module = self._load_cached(sha)
        if module is None:
            try:
                module = wasmtime.Module(self.engine, wasm)
            except wasmtime.WasmtimeError as exc:
                raise ModuleInvalid(
                    f"invalid WebAssembly module: {first_line(exc)}", details=str(exc)
                ) from None
            self.stats["compile"] += 1
            self._store_cached(sha, module)
        compiled = WasmtimeModule(sha, info, module)
        with self._lock:
            compiled = self._modules.setdefault(sha, compiled)
        if self.pool_size > 0 and not info.has_start and not abi.wasi_imports(info):
            with contextlib.suppress(SandboxError):
                self._request_fill(self._template(compiled, False, self._default_extra))
        return compiled

    def _cache_path(self, sha: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{sha}-{self.settings.fingerprint()}.cwasm"

    def _load_cached(self, sha: str) -> wasmtime.Module | None:
        path = self._cache_path(sha)
        if path is None or not path.is_file():
            return None
        try:
            # Read into memory rather than deserialize_file: that one mmaps the file, and
            # a cache file truncated by someone else would then crash the process (SIGBUS).
            module = wasmtime.Module.deserialize(self.engine, path.read_bytes())
        except OSError as exc:
            log.warning("cannot read cached module %s: %s", path, exc)
            return None
        except wasmtime.WasmtimeError as exc:
            log.warning("ignoring unusable cached module %s: %s", path, first_line(exc))
            return None
        self.stats["compile_disk_hit"] += 1
        return module

    def _store_cached(self, sha: str, module: wasmtime.Module) -> None:
        path = self._cache_path(sha)
        if path is None:
            return
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(module.serialize())
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot write the module cache %s: %s", path, exc)

    # -- linking ------------------------------------------------------------------------

    def _linker(self, wasi: bool, extra: tuple[HostFunction, ...]) -> HostLinker:
        key = (wasi, extra)
        with self._lock:
            linker = self._linkers.get(key)
            if linker is None:
                linker = self._linkers[key] = HostLinker(self.engine, wasi=wasi, extra=extra)
            return linker

    def _template(
        self, module: WasmtimeModule, wasi: bool, extra: tuple[HostFunction, ...]
    ) -> _TemplateKey:
        key = _TemplateKey(module.sha256, (wasi, extra))
        with self._lock:
            if key in self._templates:
                return key
        linker = self._linker(wasi, extra)
        abi.check_imports(module.info, linker.extra_signatures)
        if not wasi and abi.wasi_imports(module.info):
            names = ", ".join(abi.wasi_imports(module.info)[:5])
            raise AbiMismatch(
                f"the module imports WASI functions ({names}) but this agent has no WASI "
                f"capabilities; grant them at deploy time or build the agent without WASI"
            )
        try:
            pre = linker.linker.instantiate_pre(module.wasmtime_module)
        except wasmtime.WasmtimeError as exc:
            raise AbiMismatch(
                f"cannot link the module: {first_line(exc)}", details=str(exc)
            ) from None
        with self._lock:
            self._templates.setdefault(key, _Template(module, pre))
        return key

    def pooled(self, sha256: str) -> int:
        """How many pre-warmed instances of the module ``sha256`` are ready."""
        with self._lock:
            return sum(len(pool) for key, pool in self._pools.items() if key.sha256 == sha256)

    def _request_fill(self, key: _TemplateKey) -> None:
        if self._filler is not None:
            self._fill_requests.put(key)

    # -- instances ---------------------------------------------------------------------

    def _new_live(
        self,
        template: _Template,
        limits: ResourceLimits | None,
        wasi: wasmtime.WasiConfig | None = None,
    ) -> _Live:
        store = wasmtime.Store(self.engine)
        if limits is not None:
            store.set_limits(
                memory_size=limits.max_memory_bytes,
                table_elements=limits.max_table_elements,
                instances=limits.max_instances,
            )
        if wasi is not None:
            store.set_wasi(wasi)
        # Start functions and data initialisation run under limits too.
        store.set_fuel(limits.max_fuel if limits is not None else self.default_fuel)
        seconds = (limits.max_execution_time_ms if limits is not None else 5000) / 1000
        store.set_epoch_deadline(math.ceil(seconds / self.settings.epoch_tick_s) + 1)
        instance = template.pre.instantiate(store)
        return _Live(store, instance, template.exports)

    def instantiate(
        self,
        module: WasmtimeModule,
        *,
        agent_name: str,
        limits: ResourceLimits,
        host: AgentHostAPI,
        capabilities: WasiCapabilities,
        extra_functions: Sequence[HostFunction],
    ) -> WasmtimeInstance:
        if not isinstance(module, WasmtimeModule):
            raise SandboxError(
                f"module {module.sha256[:12]} was not compiled by this wasmtime sandbox"
            )
        extra = tuple(extra_functions)
        if extra:
            self._default_extra = extra
        wasi = capabilities.enabled
        key = self._template(module, wasi, extra)
        template = self._templates[key]
        live: _Live | None = None
        refill = False
        if not wasi and self.pool_size > 0 and not module.info.has_start:
            with self._lock:
                pool = self._pools.get(key)
                if pool:
                    live = pool.popleft()
                    self.stats["pool_hit"] += 1
                # Refill in batches, once half the pool is used: each wake-up of the
                # filler thread competes for the GIL with the caller.
                refill = pool is None or len(pool) <= self.pool_size // 2
        if live is not None and live.memory_size() > limits.max_memory_bytes:
            live = None  # this agent's limit is lower: instantiate under it below
        if live is None:
            self.stats["instantiate"] += 1
            wasi_config = _wasi_config(capabilities, agent_name, host) if wasi else None
            try:
                live = self._new_live(template, limits, wasi_config)
            except wasmtime.Trap as exc:
                raise _instantiate_failure(exc, limits) from None
            except wasmtime.WasmtimeError as exc:
                raise _instantiate_failure(exc, limits) from None
        instance = WasmtimeInstance(
            live,
            agent_name=agent_name,
            limits=limits,
            host=host,
            epoch_tick_s=self.settings.epoch_tick_s,
        )
        try:
            instance.initialize()
        except BaseException:
            instance.close()
            raise
        if refill:
            self._request_fill(key)
        return instance


def _instantiate_failure(exc: Exception, limits: ResourceLimits) -> ExecutionFailed:
    text = str(exc)
    code = exc.trap_code if isinstance(exc, wasmtime.Trap) else None
    if code == wasmtime.TrapCode.OUT_OF_FUEL or "all fuel consumed" in text:
        return ExecutionFailed(abi.FUEL_EXHAUSTED, reason="fuel")
    if code == wasmtime.TrapCode.INTERRUPT or "interrupt" in text:
        return ExecutionFailed(abi.timeout_message(limits.max_execution_time_ms), reason="timeout")
    if "memory" in text and ("limit" in text or "minimum" in text or "exceed" in text):
        error = ExecutionFailed(
            f"the module's initial memory does not fit max_memory_bytes "
            f"({limits.max_memory_bytes} bytes)",
            reason="memory",
        )
        error.details = text
        return error
    error = ExecutionFailed(f"instantiation failed: {_trap_summary(text)}", reason="trap")
    error.details = text
    return error


def _wasi_config(
    capabilities: WasiCapabilities, agent_name: str, host: AgentHostAPI
) -> wasmtime.WasiConfig:
    config = wasmtime.WasiConfig()
    if capabilities.stdio:

        def to_log(level: int) -> Callable[[bytes], None]:
            def write(data: bytes) -> None:
                host.log(level, data.decode("utf-8", errors="replace").rstrip("\n"))

            return write

        config.stdout_custom = to_log(abi.LogLevel.INFO)
        config.stderr_custom = to_log(abi.LogLevel.WARN)
    for guest_path, host_dir in capabilities.preopen_dirs.items():
        if not os.path.isdir(host_dir):
            raise ValidationError(
                f"agent {agent_name}: preopened directory {host_dir} does not exist"
            )
        config.preopen_dir(host_dir, guest_path, fs_mutable=False)
    if capabilities.env:
        config.env = list(capabilities.env.items())
    config.argv = [agent_name, *capabilities.args]
    return config
