"""Metering and limit instrumentation: a pure-Python rewriter of WebAssembly binaries.

wasmer-python 1.1 offers neither fuel nor epoch interruption, so the limits are compiled
into the agent itself before wasmer sees it (the technique of blockchain runtimes'
gas metering). :func:`instrument` returns a new module in which:

* every *segment* of straight-line code (a function entry, and what follows each
  ``block``/``loop``/``if``/``else``/``end``) first subtracts its instruction count from
  an exported i64 global ``__caxton_fuel``; when the global goes negative, an injected
  function calls the host import ``caxton:metering.refuel() -> i64``, which either hands
  out the next slice of fuel (after checking the wall-clock deadline) or returns 0, upon
  which the guest executes ``unreachable``. Every loop iteration and every call passes
  through at least one charge, so no guest code runs unmetered;
* bulk memory and table operations (``memory.fill``, ``memory.copy``, ``memory.init``
  and their table counterparts) are also charged one fuel per 64 bytes (elements) of
  their length, so that a loop of huge copies reaches the deadline check as often as a
  loop of arithmetic;
* ``memory.grow`` and ``table.grow`` call injected functions that refuse (return -1)
  growth past the exported mutable globals ``__caxton_memory_pages_max`` and
  ``__caxton_table_elements_max``, which the host sets per agent; the declared memory
  maximum is also capped by the node-wide ceiling given at instrumentation time;
* the start function, if any, is no longer run by instantiation but exported as
  ``__caxton_start`` (the host runs it under the limits, and not again when an instance
  is rebuilt on another thread); the memory is exported as ``__caxton_memory`` and each
  mutable global the module defines as ``__caxton_global_N``, so the host can copy an
  instance's state.

Adding the ``refuel`` import shifts every defined function's index by one; calls,
``ref.func``, exports, element segments and global initialisers are renumbered, and the
``name`` section (now stale) is dropped. Branch depths are untouched: the charges are
stack-neutral code inserted inside existing blocks, never new blocks around code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from caxton.errors import AbiMismatch, ModuleInvalid
from caxton.sandbox import abi

#: Bump when the rewriting changes: it is part of the compiled-module cache key.
INSTRUMENTATION_VERSION = 2

METERING_MODULE = "caxton:metering"
REFUEL = "refuel"
FUEL_GLOBAL = "__caxton_fuel"
MEMORY_CAP_GLOBAL = "__caxton_memory_pages_max"
TABLE_CAP_GLOBAL = "__caxton_table_elements_max"
START_EXPORT = "__caxton_start"
MEMORY_EXPORT = "__caxton_memory"
GLOBAL_EXPORT_PREFIX = "__caxton_global_"
RESERVED_PREFIX = "__caxton_"

MAX_PAGES = 65536  # 4 GiB, the wasm32 ceiling

# Instructions that cost no fuel (as in wasmtime's fuel accounting).
_FREE = frozenset({0x00, 0x01, 0x02, 0x03, 0x05, 0x0B, 0x0F, 0x1A})
_OPENERS = frozenset({0x02, 0x03, 0x04})
_BLOCKTYPE_BYTES = frozenset({0x40, 0x7F, 0x7E, 0x7D, 0x7C, 0x7B, 0x70, 0x6F})
_SIMD_LANE = frozenset(range(21, 35))
_SIMD_MEMARG = frozenset({*range(0, 12), 92, 93})
_SIMD_MEMARG_LANE = frozenset(range(84, 92))


# -------------------------------------------------------------------------
# LEB128
# -------------------------------------------------------------------------


def _truncated() -> ModuleInvalid:
    return ModuleInvalid("truncated WebAssembly module (unexpected end of a function body)")


def read_u32(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise _truncated()
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ModuleInvalid("malformed WebAssembly module (LEB128 integer too long)")


def skip_leb(data: bytes, pos: int) -> int:
    while True:
        if pos >= len(data):
            raise _truncated()
        b = data[pos]
        pos += 1
        if not b & 0x80:
            return pos


def u32(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def s64(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if (value == 0 and not b & 0x40) or (value == -1 and b & 0x40):
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


def vec(items: Iterable[bytes]) -> bytes:
    items = list(items)
    return u32(len(items)) + b"".join(items)


def section(section_id: int, payload: bytes) -> bytes:
    return bytes([section_id]) + u32(len(payload)) + payload


def _name(text: str) -> bytes:
    raw = text.encode()
    return u32(len(raw)) + raw


# -------------------------------------------------------------------------
# The module as instrumentation sees it
# -------------------------------------------------------------------------


@dataclass
class Instrumented:
    """The rewritten module and what the host needs to drive it."""

    wasm: bytes
    #: Reference type of each table the module defines (``0x70`` funcref, ``0x6F``
    #: externref) with its declared minimum size.
    table_minimums: list[int] = field(default_factory=list)
    memory_minimum_pages: int | None = None
    has_start: bool = False
    #: Names of the exported copies of the module's mutable globals.
    mutable_globals: list[str] = field(default_factory=list)
    #: The module changes its tables at run time (table.set/grow/fill/copy/init).
    mutates_tables: bool = False


@dataclass
class _Layout:
    """Indices of everything injected, decided before the code is rewritten."""

    imported_funcs: int
    fuel_global: int
    memory_cap_global: int
    table_cap_global: int
    slow_func: int
    grow_memory_func: int
    charge_length_func: int
    grow_table_funcs: dict[int, int]

    def shift(self, index: int) -> int:
        """New index of an existing function (the refuel import comes before them)."""
        return index + 1 if index >= self.imported_funcs else index


class _Sections:
    def __init__(self, wasm: bytes) -> None:
        self.wasm = wasm
        self.by_id: dict[int, abi.Section] = {}
        self.order: list[abi.Section] = abi.sections(wasm)
        for found in self.order:
            if found.id != 0:
                if found.id in self.by_id:
                    raise ModuleInvalid(
                        f"malformed WebAssembly module (duplicate section {found.id})"
                    )
                self.by_id[found.id] = found

    def payload(self, section_id: int) -> bytes:
        found = self.by_id.get(section_id)
        return self.wasm[found.payload : found.end] if found else b""

    def items(self, section_id: int) -> tuple[int, int]:
        """(count, position of the first item) of a vector section's payload."""
        payload = self.payload(section_id)
        if not payload:
            return 0, 0
        return read_u32(payload, 0)


# Section order of the binary format (custom sections aside).
_ORDER = (1, 2, 3, 4, 5, 13, 6, 7, 8, 9, 12, 10, 11)


def instrument(wasm: bytes, *, max_memory_pages: int = MAX_PAGES) -> Instrumented:
    """Rewrite ``wasm`` as described in the module docstring.

    Raises :class:`ModuleInvalid` for malformed code or instructions the rewriter does
    not know, and :class:`AbiMismatch` for modules the sandbox cannot limit (imported or
    shared memories, several memories, names reserved for the instrumentation).
    """
    secs = _Sections(wasm)
    info = abi.parse_module(wasm)
    for imp in info.imports:
        if imp.module == METERING_MODULE:
            raise AbiMismatch(f"the module imports {imp.module}.{imp.name}, which is reserved")
        if imp.kind in ("memory", "table"):
            raise AbiMismatch(
                f"the module imports a {imp.kind} ({imp.module}.{imp.name}); agents must "
                f"define their own {imp.kind} (the sandbox limits only those)"
            )
    for name in info.exports:
        if name.startswith(RESERVED_PREFIX):
            raise AbiMismatch(f"the export name '{name}' is reserved for the sandbox")
    if len(info.memories) > 1:
        raise AbiMismatch("the module defines several memories; agents may define one")
    for memory in info.memories:
        if memory.memory64 or memory.shared:
            raise AbiMismatch("64-bit and shared memories are not supported for agents")

    result = Instrumented(wasm=b"")
    imported_funcs = sum(1 for imp in info.imports if imp.kind == "func")
    imported_globals = sum(1 for imp in info.imports if imp.kind == "global")
    type_count, _ = secs.items(1)
    defined_funcs, _ = secs.items(3)
    global_count, _ = secs.items(6)
    tables = _read_tables(secs.payload(4))
    result.table_minimums = [minimum for _reftype, minimum in tables]

    # New types go at the end of the type section.
    t_void = type_count
    t_refuel = type_count + 1
    t_grow = type_count + 2
    new_types = [b"\x60\x00\x00", b"\x60\x00\x01\x7e", b"\x60\x01\x7f\x01\x7f"]
    table_types: dict[int, int] = {}
    for reftype in sorted({reftype for reftype, _ in tables}):
        table_types[reftype] = type_count + len(new_types)
        new_types.append(bytes([0x60, 0x02, reftype, 0x7F, 0x01, 0x7F]))

    first_new_func = imported_funcs + 1 + defined_funcs
    layout = _Layout(
        imported_funcs=imported_funcs,
        fuel_global=imported_globals + global_count,
        memory_cap_global=imported_globals + global_count + 1,
        table_cap_global=imported_globals + global_count + 2,
        slow_func=first_new_func,
        grow_memory_func=first_new_func + 1,
        charge_length_func=first_new_func + 2,
        grow_table_funcs={i: first_new_func + 3 + i for i in range(len(tables))},
    )
    # $charge_length has the type of $grow_memory: (i32) -> i32.
    new_func_types = [t_void, t_grow, t_grow] + [table_types[reftype] for reftype, _ in tables]
    new_bodies = [
        _slow_body(layout),
        _grow_memory_body(layout, bool(info.memories)),
        _charge_length_body(layout),
    ] + [_grow_table_body(layout, i) for i in range(len(tables))]

    memory_cap = max_memory_pages
    rebuilt: dict[int, bytes] = {}
    # type
    rebuilt[1] = u32(type_count + len(new_types)) + _rest(secs, 1) + b"".join(new_types)
    # import: refuel goes last among imports
    import_count, _ = secs.items(2)
    refuel_import = _name(METERING_MODULE) + _name(REFUEL) + b"\x00" + u32(t_refuel)
    rebuilt[2] = u32(import_count + 1) + _rest(secs, 2) + refuel_import
    # function
    rebuilt[3] = (
        u32(defined_funcs + len(new_func_types))
        + _rest(secs, 3)
        + b"".join(u32(t) for t in new_func_types)
    )
    # memory: cap the declared maximum
    if info.memories:
        memory = info.memories[0]
        result.memory_minimum_pages = memory.minimum_pages
        if memory.minimum_pages > memory_cap:
            raise AbiMismatch(
                f"the module's initial memory ({memory.minimum_bytes} bytes) exceeds the "
                f"node's memory ceiling ({memory_cap * abi.PAGE_SIZE} bytes)"
            )
        maximum = min(memory.maximum_pages or MAX_PAGES, memory_cap)
        rebuilt[5] = b"\x01\x01" + u32(memory.minimum_pages) + u32(maximum)
    # global: renumber ref.func in initialisers, add the three control globals
    globals_payload, mutable = _rewrite_globals(secs, layout, imported_globals)
    result.mutable_globals = [f"{GLOBAL_EXPORT_PREFIX}{index}" for index in mutable]
    cap_init = min(memory_cap, MAX_PAGES)
    globals_payload += b"\x7e\x01\x42\x00\x0b"  # fuel: mut i64 = 0
    globals_payload += b"\x7f\x01\x41" + s64(cap_init) + b"\x0b"
    globals_payload += b"\x7f\x01\x41" + s64(0x7FFFFFFF) + b"\x0b"
    rebuilt[6] = u32(global_count + 3) + globals_payload
    # export
    rebuilt[7] = _rewrite_exports(secs, layout, mutable, bool(info.memories))
    # start: exported instead of run at instantiation
    if 8 in secs.by_id:
        result.has_start = True
        start_index, _ = read_u32(secs.payload(8), 0)
        rebuilt[7] = _append_export(rebuilt[7], START_EXPORT, 0, layout.shift(start_index))
    # element
    if 9 in secs.by_id:
        rebuilt[9] = _rewrite_elements(secs.payload(9), layout)
    # code
    code_payload, mutates_tables = _rewrite_code(secs.payload(10), layout)
    result.mutates_tables = mutates_tables
    body_count, _ = secs.items(10)
    rebuilt[10] = (
        u32(body_count + len(new_bodies))
        + code_payload
        + b"".join(u32(len(body)) + body for body in new_bodies)
    )

    out = [wasm[:8]]
    emitted: set[int] = set()

    def emit_through(last: int | None) -> None:
        stop = _ORDER.index(last) + 1 if last is not None else len(_ORDER)
        for known in _ORDER[:stop]:
            if known in emitted:
                continue
            emitted.add(known)
            if known == 8:
                continue  # the start section is replaced by an export
            if known in rebuilt:
                out.append(section(known, rebuilt[known]))
            elif known in secs.by_id:
                found = secs.by_id[known]
                out.append(wasm[found.start : found.end])

    for found in secs.order:
        if found.id != 0:
            if found.id not in _ORDER:
                raise ModuleInvalid(f"malformed WebAssembly module (unknown section {found.id})")
            emit_through(found.id)
        elif _custom_name(wasm, found) != "name":
            out.append(wasm[found.start : found.end])
    emit_through(None)
    result.wasm = b"".join(out)
    return result


def _custom_name(wasm: bytes, found: abi.Section) -> str:
    length, pos = read_u32(wasm, found.payload)
    return wasm[pos : pos + length].decode("utf-8", errors="replace")


def _rest(secs: _Sections, section_id: int) -> bytes:
    """A vector section's items without the count."""
    payload = secs.payload(section_id)
    if not payload:
        return b""
    _, pos = read_u32(payload, 0)
    return payload[pos:]


def _read_limits(data: bytes, pos: int) -> tuple[int, int]:
    flags = data[pos]
    minimum, pos = read_u32(data, pos + 1)
    if flags & 0x01:
        pos = skip_leb(data, pos)
    return minimum, pos


def _read_tables(payload: bytes) -> list[tuple[int, int]]:
    if not payload:
        return []
    count, pos = read_u32(payload, 0)
    tables = []
    for _ in range(count):
        reftype = payload[pos]
        if reftype not in (0x70, 0x6F):
            raise AbiMismatch(f"unsupported table type 0x{reftype:02x}")
        minimum, pos = _read_limits(payload, pos + 1)
        tables.append((reftype, minimum))
    return tables


# -------------------------------------------------------------------------
# Injected functions
# -------------------------------------------------------------------------


def _slow_body(layout: _Layout) -> bytes:
    """(func $slow (local i64)
    loop  call $refuel  local.tee 0  i64.eqz  if unreachable end
          global.get $fuel  local.get 0  i64.add  global.set $fuel
          global.get $fuel  i64.const 0  i64.lt_s  br_if 0  end)

    Asks until the debt is paid: a bulk-memory charge may exceed one slice, and every
    slice granted is checked against the budget and the deadline."""
    fuel = u32(layout.fuel_global)
    return (
        b"\x01\x01\x7e"
        + b"\x03\x40"
        + b"\x10" + u32(layout.imported_funcs)
        + b"\x22\x00\x50\x04\x40\x00\x0b"
        + b"\x23" + fuel + b"\x20\x00\x7c\x24" + fuel
        + b"\x23" + fuel + b"\x42\x00\x53\x0d\x00"
        + b"\x0b\x0b"
    )  # fmt: skip


#: Bulk memory and table operations cost one fuel per this many bytes (elements) on top
#: of their instruction: a loop of large ``memory.fill``s must reach the deadline check.
BULK_BYTES_PER_FUEL_SHIFT = 6


def _charge_length_body(layout: _Layout) -> bytes:
    """(func $charge_length (param $n i32) (result i32)
    charge n >> 6 (as for a segment), then return n: inserted before a bulk operation,
    whose length is on top of the stack)."""
    fuel = u32(layout.fuel_global)
    return (
        b"\x00"
        + b"\x23" + fuel
        + b"\x20\x00\x41" + s64(BULK_BYTES_PER_FUEL_SHIFT) + b"\x76\xad\x7d"
        + b"\x24" + fuel
        + b"\x23" + fuel + b"\x42\x00\x53\x04\x40\x10" + u32(layout.slow_func) + b"\x0b"
        + b"\x20\x00\x0b"
    )  # fmt: skip


def _grow_memory_body(layout: _Layout, has_memory: bool) -> bytes:
    """(func (param $pages i32) (result i32): -1 past the cap, else memory.grow)."""
    if not has_memory:
        return b"\x00\x41\x7f\x0b"
    return (
        b"\x00"
        + b"\x3f\x00\xad\x20\x00\xad\x7c"  # memory.size + pages (as i64)
        + b"\x23" + u32(layout.memory_cap_global) + b"\xad\x56"  # > cap ?
        + b"\x04\x40\x41\x7f\x0f\x0b"  # then return -1
        + b"\x20\x00\x40\x00\x0b"  # memory.grow
    )  # fmt: skip


def _grow_table_body(layout: _Layout, table: int) -> bytes:
    """(func (param $init ref) (param $n i32) (result i32)): table.grow under the cap."""
    t = u32(table)
    return (
        b"\x00"
        + b"\xfc\x10" + t + b"\xad\x20\x01\xad\x7c"
        + b"\x23" + u32(layout.table_cap_global) + b"\xad\x56"
        + b"\x04\x40\x41\x7f\x0f\x0b"
        + b"\x20\x00\x20\x01\xfc\x0f" + t + b"\x0b"
    )  # fmt: skip


# -------------------------------------------------------------------------
# Rewriting sections
# -------------------------------------------------------------------------


def _rewrite_const_expr(data: bytes, pos: int, layout: _Layout) -> tuple[bytes, int]:
    """Copy one constant expression, renumbering ref.func; return (bytes, new pos)."""
    out = bytearray()
    start = pos
    while True:
        if pos >= len(data):
            raise _truncated()
        op = data[pos]
        if op == 0x0B:
            out += data[start : pos + 1]
            return bytes(out), pos + 1
        if op == 0xD2:
            out += data[start:pos]
            index, pos = read_u32(data, pos + 1)
            out += b"\xd2" + u32(layout.shift(index))
            start = pos
            continue
        pos = _skip_instruction(data, pos)


def _rewrite_globals(
    secs: _Sections, layout: _Layout, imported_globals: int
) -> tuple[bytes, list[int]]:
    payload = secs.payload(6)
    if not payload:
        return b"", []
    count, pos = read_u32(payload, 0)
    out = bytearray()
    mutable: list[int] = []
    for i in range(count):
        header = payload[pos : pos + 2]
        if header[1] == 1:
            mutable.append(imported_globals + i)
        expr, pos = _rewrite_const_expr(payload, pos + 2, layout)
        out += header + expr
    return bytes(out), mutable


def _export_entry(name: str, kind: int, index: int) -> bytes:
    return _name(name) + bytes([kind]) + u32(index)


def _append_export(payload: bytes, name: str, kind: int, index: int) -> bytes:
    count, pos = read_u32(payload, 0)
    return u32(count + 1) + payload[pos:] + _export_entry(name, kind, index)


def _rewrite_exports(
    secs: _Sections, layout: _Layout, mutable: list[int], has_memory: bool
) -> bytes:
    payload = secs.payload(7)
    entries: list[bytes] = []
    if payload:
        count, pos = read_u32(payload, 0)
        for _ in range(count):
            entry_start = pos
            length, name_start = read_u32(payload, pos)
            kind_at = name_start + length
            index, pos = read_u32(payload, kind_at + 1)
            if payload[kind_at] == 0:
                index = layout.shift(index)
            entries.append(payload[entry_start : kind_at + 1] + u32(index))
    entries.append(_export_entry(FUEL_GLOBAL, 3, layout.fuel_global))
    entries.append(_export_entry(MEMORY_CAP_GLOBAL, 3, layout.memory_cap_global))
    entries.append(_export_entry(TABLE_CAP_GLOBAL, 3, layout.table_cap_global))
    if has_memory:
        entries.append(_export_entry(MEMORY_EXPORT, 2, 0))
    for index in mutable:
        entries.append(_export_entry(f"{GLOBAL_EXPORT_PREFIX}{index}", 3, index))
    return vec(entries)


def _rewrite_elements(payload: bytes, layout: _Layout) -> bytes:
    count, pos = read_u32(payload, 0)
    out = bytearray(u32(count))
    for _ in range(count):
        flags, after = read_u32(payload, pos)
        out += payload[pos:after]
        pos = after
        if flags & 0x02 and not flags & 0x01:  # explicit table index
            after = skip_leb(payload, pos)
            out += payload[pos:after]
            pos = after
        if not flags & 0x01:  # active: offset expression
            expr, pos = _rewrite_const_expr(payload, pos, layout)
            out += expr
        if flags & 0x03:  # elemkind or reftype byte
            out.append(payload[pos])
            pos += 1
        n, pos = read_u32(payload, pos)
        out += u32(n)
        for _ in range(n):
            if flags & 0x04:
                expr, pos = _rewrite_const_expr(payload, pos, layout)
                out += expr
            else:
                index, pos = read_u32(payload, pos)
                out += u32(layout.shift(index))
    return bytes(out)


# -------------------------------------------------------------------------
# Code
# -------------------------------------------------------------------------


def _rewrite_code(payload: bytes, layout: _Layout) -> tuple[bytes, bool]:
    if not payload:
        return b"", False
    count, pos = read_u32(payload, 0)
    out: list[bytes] = []
    mutates_tables = False
    for _ in range(count):
        size, start = read_u32(payload, pos)
        end = start + size
        if end > len(payload):
            raise _truncated()
        body, mutated = _rewrite_body(payload[start:end], layout)
        mutates_tables = mutates_tables or mutated
        out.append(u32(len(body)) + body)
        pos = end
    return b"".join(out), mutates_tables


def _charge_code(layout: _Layout) -> Callable[[int], bytes]:
    fuel = u32(layout.fuel_global)
    prefix = b"\x23" + fuel + b"\x42"
    suffix = (
        b"\x7d\x24" + fuel  # i64.sub, global.set
        + b"\x23" + fuel + b"\x42\x00\x53"  # global.get, i64.const 0, i64.lt_s
        + b"\x04\x40\x10" + u32(layout.slow_func) + b"\x0b"  # if call $slow end
    )  # fmt: skip
    cache: dict[int, bytes] = {}

    def charge(cost: int) -> bytes:
        code = cache.get(cost)
        if code is None:
            code = cache[cost] = prefix + s64(cost) + suffix
        return code

    return charge


_TABLE_MUTATORS = frozenset({12, 14, 15, 17})  # table.init, .copy, .grow, .fill
#: memory.init, memory.copy, memory.fill, table.init, table.copy, table.fill: the
#: length is their last operand.
_BULK = frozenset({8, 10, 11, 12, 14, 17})


def _rewrite_body(body: bytes, layout: _Layout) -> tuple[bytes, bool]:
    charge = _charge_code(layout)
    groups, pos = read_u32(body, 0)
    for _ in range(groups):
        pos = skip_leb(body, pos)
        pos += 1  # value type
    out: list[bytes] = [body[:pos]]
    copied = pos  # body[copied:pos] is yet to be copied to out
    slot = len(out)  # where the current segment's charge goes
    out.append(b"")
    cost = 0
    depth = 1
    mutates_tables = False
    n = len(body)
    while pos < n:
        op = body[pos]
        if op not in _FREE:
            cost += 1
        if op in _OPENERS or op == 0x05:  # block, loop, if, else
            after = pos + 1
            if op != 0x05:
                after = _skip_blocktype(body, after)
                depth += 1
            out.append(body[copied:after])
            out[slot] = charge(cost) if cost else b""
            slot, cost, copied, pos = len(out), 0, after, after
            out.append(b"")
        elif op == 0x0B:  # end
            depth -= 1
            out.append(body[copied : pos + 1])
            out[slot] = charge(cost) if cost else b""
            copied = pos = pos + 1
            if depth == 0:
                break
            slot, cost = len(out), 0
            out.append(b"")
        elif op in (0x10, 0x12, 0xD2):  # call, return_call, ref.func
            index, after = read_u32(body, pos + 1)
            out.append(body[copied:pos])
            out.append(bytes([op]) + u32(layout.shift(index)))
            copied = pos = after
        elif op == 0x40:  # memory.grow
            after = skip_leb(body, pos + 1)
            out.append(body[copied:pos])
            out.append(b"\x10" + u32(layout.grow_memory_func))
            copied = pos = after
        elif op == 0xFC:
            sub, after = read_u32(body, pos + 1)
            if sub == 15:  # table.grow
                table, after = read_u32(body, after)
                if table not in layout.grow_table_funcs:
                    raise ModuleInvalid("malformed WebAssembly module (table index out of range)")
                out.append(body[copied:pos])
                out.append(b"\x10" + u32(layout.grow_table_funcs[table]))
                copied = pos = after
            else:
                if sub in _BULK:
                    # The length is on top of the stack: charge for it first.
                    out.append(body[copied:pos])
                    out.append(b"\x10" + u32(layout.charge_length_func))
                    copied = pos
                pos = _skip_instruction(body, pos)
            if sub in _TABLE_MUTATORS:
                mutates_tables = True
        else:
            if op == 0x26:  # table.set
                mutates_tables = True
            pos = _skip_instruction(body, pos)
    if depth != 0 or pos != n:
        raise ModuleInvalid("malformed WebAssembly module (a function body is not closed by end)")
    return b"".join(out), mutates_tables


def _skip_blocktype(data: bytes, pos: int) -> int:
    if pos >= len(data):
        raise _truncated()
    if data[pos] in _BLOCKTYPE_BYTES:
        return pos + 1
    return skip_leb(data, pos)


def _skip_memarg(data: bytes, pos: int) -> int:
    align, pos = read_u32(data, pos)
    if align & 0x40:  # multi-memory: a memory index follows
        pos = skip_leb(data, pos)
    return skip_leb(data, pos)


def _skip_instruction(data: bytes, pos: int) -> int:
    """Position after the instruction at ``pos``."""
    op = data[pos]
    pos += 1
    if op in _OPENERS:
        return _skip_blocktype(data, pos)
    if 0x45 <= op <= 0xC4 or op in (0x00, 0x01, 0x05, 0x0B, 0x0F, 0x1A, 0x1B, 0xD1):
        return pos
    if op in (0x0C, 0x0D, 0x10, 0x12, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0xD2):
        return skip_leb(data, pos)
    if op in (0x11, 0x13):
        return skip_leb(data, skip_leb(data, pos))
    if op == 0x0E:
        count, pos = read_u32(data, pos)
        for _ in range(count + 1):
            pos = skip_leb(data, pos)
        return pos
    if op == 0x1C:
        count, pos = read_u32(data, pos)
        return pos + count
    if 0x28 <= op <= 0x3E:
        return _skip_memarg(data, pos)
    if op in (0x3F, 0x40, 0x41, 0x42):
        return skip_leb(data, pos)
    if op == 0x43:
        return pos + 4
    if op == 0x44:
        return pos + 8
    if op == 0xD0:
        return pos + 1
    if op == 0xFC:
        sub, pos = read_u32(data, pos)
        if sub <= 7:
            return pos
        if sub in (8, 10, 12, 14):
            return skip_leb(data, skip_leb(data, pos))
        if sub in (9, 11, 13, 15, 16, 17):
            return skip_leb(data, pos)
        raise _unknown(f"0xfc {sub}")
    if op == 0xFD:
        sub, pos = read_u32(data, pos)
        if sub in _SIMD_MEMARG:
            return _skip_memarg(data, pos)
        if sub in (12, 13):
            return pos + 16
        if sub in _SIMD_LANE:
            return pos + 1
        if sub in _SIMD_MEMARG_LANE:
            return _skip_memarg(data, pos) + 1
        return pos
    raise _unknown(f"0x{op:02x}")


def _unknown(opcode: str) -> ModuleInvalid:
    return ModuleInvalid(
        f"the module uses instruction {opcode}, which the wasmer sandbox cannot meter "
        f"(threads, exceptions and other proposals beyond reference types, bulk memory, "
        f"SIMD and tail calls are not supported); use the wasmtime sandbox or rebuild "
        f"the agent without them"
    )
