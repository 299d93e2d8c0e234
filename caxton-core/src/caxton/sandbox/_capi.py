"""Direct access to the wasmtime C API for the message hot path.

wasmtime-py's high-level calls (``Func.__call__``, ``Memory.write``, ``exports()``) cost
about 100 µs per message; most of it is Python-side type checking and conversion. This
module binds the few C functions a delivery needs with plain integer arguments:
unchecked calls (``wasmtime_func_call_unchecked``) on argument arrays allocated once
per instance, fuel and epoch re-arming, and the linear memory base for ``memmove``.

The function objects are fresh ``_FuncPtr`` instances (``dll[name]``), so setting
their ``restype``/``argtypes`` does not change the ones wasmtime-py itself uses.
"""

from __future__ import annotations

import ctypes
from ctypes import c_bool, c_char_p, c_size_t, c_uint8, c_uint64, c_void_p
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi

_dll = ffi.dll


def _bind(name: str, restype: Any, argtypes: list[Any]) -> Any:
    func = _dll[name]
    func.restype = restype
    func.argtypes = argtypes
    return func


#: ``size_t callback(void *env, wasmtime_caller_t *caller, wasmtime_val_raw_t *args,
#: size_t nargs_and_results)``; returns 0 or a ``wasm_trap_t*`` to raise.
UncheckedCallback = ctypes.CFUNCTYPE(
    c_size_t, c_void_p, c_void_p, ctypes.POINTER(ffi.wasmtime_val_raw_t), c_size_t
)

func_call_unchecked = _bind(
    "wasmtime_func_call_unchecked", c_void_p, [c_void_p, c_void_p, c_void_p, c_size_t, c_void_p]
)
context_set_fuel = _bind("wasmtime_context_set_fuel", c_void_p, [c_void_p, c_uint64])
context_get_fuel = _bind("wasmtime_context_get_fuel", c_void_p, [c_void_p, c_void_p])
context_set_epoch_deadline = _bind(
    "wasmtime_context_set_epoch_deadline", None, [c_void_p, c_uint64]
)
context_get_data = _bind("wasmtime_context_get_data", c_void_p, [c_void_p])
context_set_data = _bind("wasmtime_context_set_data", None, [c_void_p, c_void_p])
caller_context = _bind("wasmtime_caller_context", c_void_p, [c_void_p])
memory_data = _bind("wasmtime_memory_data", c_void_p, [c_void_p, c_void_p])
memory_data_size = _bind("wasmtime_memory_data_size", c_size_t, [c_void_p, c_void_p])
instance_export_get = _bind(
    "wasmtime_instance_export_get", c_bool, [c_void_p, c_void_p, c_char_p, c_size_t, c_void_p]
)
trap_new = _bind("wasmtime_trap_new", c_void_p, [c_char_p, c_size_t])
trap_code = _bind("wasmtime_trap_code", c_bool, [c_void_p, c_void_p])
linker_define_func_unchecked = _bind(
    "wasmtime_linker_define_func_unchecked",
    c_void_p,
    [
        c_void_p,
        c_char_p,
        c_size_t,
        c_char_p,
        c_size_t,
        c_void_p,
        UncheckedCallback,
        c_void_p,
        c_void_p,
    ],
)
engine_increment_epoch = _bind("wasmtime_engine_increment_epoch", None, [c_void_p])

TRAP_STACK_OVERFLOW = wasmtime.TrapCode.STACK_OVERFLOW.value
TRAP_INTERRUPT = wasmtime.TrapCode.INTERRUPT.value
TRAP_OUT_OF_FUEL = wasmtime.TrapCode.OUT_OF_FUEL.value
TRAP_MEMORY_OUT_OF_BOUNDS = wasmtime.TrapCode.MEMORY_OUT_OF_BOUNDS.value
TRAP_UNREACHABLE = wasmtime.TrapCode.UNREACHABLE.value

string_at = ctypes.string_at
memmove = ctypes.memmove
ValRaw = ffi.wasmtime_val_raw_t
FuncStruct = ffi.wasmtime_func_t
ExternStruct = ffi.wasmtime_extern_t
EXTERN_FUNC = ffi.WASMTIME_EXTERN_FUNC.value
EXTERN_MEMORY = ffi.WASMTIME_EXTERN_MEMORY.value


def address(obj: Any) -> int:
    return ctypes.addressof(obj)


def context_address(store: wasmtime.Store) -> int:
    """The address of ``store``'s context; valid while ``store`` is alive."""
    ptr = store._context()
    return ctypes.cast(ptr, c_void_p).value or 0


def error_text(error_ptr: int) -> str:
    """Take ownership of a ``wasmtime_error_t*`` and return its message."""
    error = wasmtime.WasmtimeError._from_ptr(
        ctypes.cast(error_ptr, ctypes.POINTER(ffi.wasmtime_error_t))
    )
    return str(error)


def trap_details(trap_ptr: int) -> tuple[int | None, str]:
    """Take ownership of a ``wasm_trap_t*``; return its trap code (or None) and message."""
    code = c_uint8(0)
    has_code = trap_code(trap_ptr, ctypes.byref(code))
    trap = wasmtime.Trap._from_ptr(ctypes.cast(trap_ptr, ctypes.POINTER(ffi.wasm_trap_t)))
    return (code.value if has_code else None), trap.message


def new_trap(message: str) -> int:
    raw = message.encode("utf-8")
    return int(trap_new(raw, len(raw)) or 0)
