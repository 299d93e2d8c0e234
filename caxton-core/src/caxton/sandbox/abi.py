"""The agent ABI v1, independent of any engine (docs/agent-abi.md).

Constants (export and import signatures, status codes, error wording) and a small
pure-Python reader of the WebAssembly binary format that finds what the ABI checks
before instantiation: imports, exports with their function types, custom sections,
memories and constant globals. Every sandbox driver (wasmtime in core, the wasmer
plugin) uses this module so that all of them accept and reject the same modules with
the same words.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from caxton.errors import AbiMismatch, ModuleInvalid

#: The ABI version this release speaks.
ABI_VERSION = 1
SUPPORTED_ABI_VERSIONS = frozenset({1})
#: Custom section whose payload is the version as an unsigned LEB128 (``\x01``).
ABI_SECTION = "caxton.abi"
#: Alternative declaration: an exported immutable i32 global holding the version.
ABI_GLOBAL = "caxton_abi_version"

HOST_MODULE = "caxton"
LEGACY_MODULE = "env"
WASI_MODULE = "wasi_snapshot_preview1"

#: Size of a WebAssembly page.
PAGE_SIZE = 65536
#: Longest text accepted by ``log`` (longer text is cut).
MAX_LOG_BYTES = 64 * 1024
#: Most bytes one ``random`` call fills.
MAX_RANDOM_BYTES = 64 * 1024
#: Longest key accepted by the KV functions.
MAX_KEY_BYTES = 1024
#: Longest recipient name of ``env.send_message`` (agent names are 1-64 chars).
MAX_RECIPIENT_BYTES = 64


class Status(enum.IntEnum):
    """Return codes of the host imports (i32). Non-negative values mean success."""

    OK = 0
    #: A pointer/length outside linear memory, bad UTF-8 or JSON, a bad argument.
    INVALID = -1
    #: Message over ``max_message_bytes``, key over :data:`MAX_KEY_BYTES`.
    TOO_LARGE = -2
    #: Unknown key, timer, recipient or conversation to reply to.
    NOT_FOUND = -3
    #: Not allowed (capability missing, quota reached).
    DENIED = -4
    #: Back-pressure: the recipient's queue is full; retry later.
    BUSY = -5
    #: The host failed; the error is in the node log.
    INTERNAL = -6


class LogLevel(enum.IntEnum):
    TRACE = 0
    DEBUG = 1
    INFO = 2
    WARN = 3
    ERROR = 4


@dataclass(frozen=True)
class Signature:
    params: tuple[str, ...]
    results: tuple[str, ...]

    def __str__(self) -> str:
        results = ", ".join(self.results) if self.results else "nothing"
        return f"({', '.join(self.params)}) -> {results}"


def _sig(params: str, results: str = "") -> Signature:
    return Signature(tuple(params.split()), tuple(results.split()))


#: What an agent may export, with the type each must have.
GUEST_EXPORTS: Mapping[str, Signature] = {
    "alloc": _sig("i32", "i32"),
    "dealloc": _sig("i32 i32"),
    "handle_message": _sig("i32 i32", "i32"),
    "handle_timer": _sig("i64"),
    "agent_init": _sig(""),
    "agent_shutdown": _sig(""),
}

#: The host imports of ABI v1, by (module, name).
HOST_IMPORTS: Mapping[tuple[str, str], Signature] = {
    (HOST_MODULE, "send"): _sig("i32 i32", "i32"),
    (HOST_MODULE, "reply"): _sig("i32 i32", "i32"),
    (HOST_MODULE, "log"): _sig("i32 i32 i32"),
    (HOST_MODULE, "now_us"): _sig("", "i64"),
    (HOST_MODULE, "random"): _sig("i32 i32", "i32"),
    (HOST_MODULE, "kv_store"): _sig("i32 i32 i32 i32", "i32"),
    (HOST_MODULE, "kv_load"): _sig("i32 i32 i32 i32", "i32"),
    (HOST_MODULE, "kv_delete"): _sig("i32 i32", "i32"),
    (HOST_MODULE, "timer_set"): _sig("i64 i32", "i64"),
    (HOST_MODULE, "timer_cancel"): _sig("i64", "i32"),
    (LEGACY_MODULE, "log"): _sig("i32 i32"),
    (LEGACY_MODULE, "get_time"): _sig("", "i64"),
    (LEGACY_MODULE, "send_message"): _sig("i32 i32 i32", "i32"),
}

# -- error wording (the same on every sandbox) ------------------------------------

FUEL_EXHAUSTED = "fuel exhausted (CPU limit reached)"
STACK_OVERFLOW = "stack overflow (call stack exhausted, deep recursion?)"
POISONED = (
    "agent instance is unusable after an earlier failure ({reason}); "
    "create a new instance (the agent's restart policy does)"
)
NO_HANDLER = "agent does not export handle_message; it cannot receive messages"


def timeout_message(limit_ms: int) -> str:
    return f"Execution timeout after {limit_ms}ms"


def memory_message(limit_bytes: int) -> str:
    return (
        f"memory limit exceeded: the agent tried to grow its memory past "
        f"max_memory_bytes ({limit_bytes} bytes)"
    )


def message_too_large(size: int, limit: int) -> str:
    return f"Message too large: {size} bytes exceeds max_message_bytes ({limit} bytes)"


# -------------------------------------------------------------------------
# Reading the binary format
# -------------------------------------------------------------------------

WASM_MAGIC = b"\0asm"
WASM_VERSION = b"\1\0\0\0"

_VALTYPES = {
    0x7F: "i32",
    0x7E: "i64",
    0x7D: "f32",
    0x7C: "f64",
    0x7B: "v128",
    0x70: "funcref",
    0x6F: "externref",
}
_KINDS = {0: "func", 1: "table", 2: "memory", 3: "global", 4: "tag"}


@dataclass(frozen=True)
class Import:
    module: str
    name: str
    kind: str
    #: For functions, their type.
    signature: Signature | None = None


@dataclass(frozen=True)
class Export:
    name: str
    kind: str
    index: int
    signature: Signature | None = None


@dataclass(frozen=True)
class MemoryLimits:
    minimum_pages: int
    maximum_pages: int | None
    memory64: bool = False
    shared: bool = False

    @property
    def minimum_bytes(self) -> int:
        return self.minimum_pages * PAGE_SIZE


@dataclass
class ModuleInfo:
    """What the ABI needs to know of a module, read without compiling it."""

    imports: list[Import] = field(default_factory=list)
    exports: dict[str, Export] = field(default_factory=dict)
    custom_sections: dict[str, list[bytes]] = field(default_factory=dict)
    #: Memories defined by the module (imported ones are in ``imports``).
    memories: list[MemoryLimits] = field(default_factory=list)
    #: Initial value of each global defined by ``i32.const``/``i64.const``, by index
    #: in the global index space; other globals are absent.
    constant_globals: dict[int, tuple[str, bool, int]] = field(default_factory=dict)
    #: The module has a start function (it runs during instantiation).
    has_start: bool = False

    @property
    def export_names(self) -> frozenset[str]:
        return frozenset(self.exports)


class _Reader:
    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def eof(self) -> bool:
        return self.pos >= self.end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise ModuleInvalid("truncated WebAssembly module (unexpected end of a section)")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def bytes(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise ModuleInvalid("truncated WebAssembly module (unexpected end of a section)")
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def u32(self) -> int:
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 35:
                raise ModuleInvalid("malformed WebAssembly module (LEB128 integer too long)")

    def s64(self) -> int:
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                if b & 0x40:
                    result -= 1 << shift
                return result
            if shift > 70:
                raise ModuleInvalid("malformed WebAssembly module (LEB128 integer too long)")

    def name(self) -> str:
        raw = self.bytes(self.u32())
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ModuleInvalid("malformed WebAssembly module (a name is not UTF-8)") from None

    def valtype(self) -> str:
        b = self.byte()
        try:
            return _VALTYPES[b]
        except KeyError:
            return f"0x{b:02x}"

    def limits(self) -> tuple[int, int | None, int]:
        flags = self.byte()
        minimum = self.u32() if not flags & 0x04 else self.s64()
        maximum = None
        if flags & 0x01:
            maximum = self.u32() if not flags & 0x04 else self.s64()
        if flags & 0x08:  # custom page size
            self.u32()
        return minimum, maximum, flags


@dataclass(frozen=True)
class Section:
    """Where one section lies in the module: ``wasm[start:end]`` is the whole section
    (id, size, payload); ``wasm[payload:end]`` its contents. For rewriting tools (the
    wasmer plugin's metering and memory capping)."""

    id: int
    start: int
    payload: int
    end: int


def check_header(wasm: bytes) -> None:
    if len(wasm) < 8 or wasm[:4] != WASM_MAGIC:
        raise ModuleInvalid(
            "not a WebAssembly module (missing the \\0asm header); "
            "send the compiled .wasm bytes, base64-encoded in JSON"
        )
    if wasm[4:8] != WASM_VERSION:
        raise ModuleInvalid(
            f"unsupported WebAssembly binary version {wasm[4:8].hex()} (expected 01000000); "
            "components are not agents: build a core module"
        )


def sections(wasm: bytes) -> list[Section]:
    """Split a module into its sections. Raises ModuleInvalid for non-wasm bytes."""
    check_header(wasm)
    found: list[Section] = []
    reader = _Reader(wasm, 8)
    while not reader.eof():
        start = reader.pos
        section_id = reader.byte()
        size = reader.u32()
        payload = reader.pos
        if payload + size > len(wasm):
            raise ModuleInvalid("truncated WebAssembly module (a section runs past the end)")
        reader.pos = payload + size
        found.append(Section(section_id, start, payload, payload + size))
    return found


def parse_module(wasm: bytes) -> ModuleInfo:
    """Read the sections the ABI checks. Raises ModuleInvalid for non-wasm bytes."""
    info = ModuleInfo()
    types: list[Signature] = []
    func_types: list[int] = []  # type index per function in the function index space
    global_count = 0
    for section in sections(wasm):
        section_id = section.id
        body = _Reader(wasm, section.payload, section.end)
        if section_id == 0:
            name = body.name()
            info.custom_sections.setdefault(name, []).append(wasm[body.pos : body.end])
        elif section_id == 1:
            types = [_read_functype(body) for _ in range(body.u32())]
        elif section_id == 2:
            for _ in range(body.u32()):
                module, name = body.name(), body.name()
                kind = body.byte()
                sig = None
                if kind == 0:
                    index = body.u32()
                    sig = _type_at(types, index)
                    func_types.append(index)
                elif kind == 1:
                    body.valtype()
                    body.limits()
                elif kind == 2:
                    body.limits()
                elif kind == 3:
                    body.valtype()
                    body.byte()
                    global_count += 1
                elif kind == 4:
                    body.byte()
                    body.u32()
                else:
                    raise ModuleInvalid(f"malformed WebAssembly module (import kind {kind})")
                info.imports.append(Import(module, name, _KINDS[kind], sig))
        elif section_id == 3:
            func_types.extend(body.u32() for _ in range(body.u32()))
        elif section_id == 5:
            for _ in range(body.u32()):
                minimum, maximum, flags = body.limits()
                info.memories.append(
                    MemoryLimits(minimum, maximum, bool(flags & 0x04), bool(flags & 0x02))
                )
        elif section_id == 6:
            for _ in range(body.u32()):
                valtype = body.valtype()
                mutable = body.byte() == 1
                value = _const_expr(body)
                if value is not None:
                    info.constant_globals[global_count] = (valtype, mutable, value)
                global_count += 1
        elif section_id == 8:
            info.has_start = True
        elif section_id == 7:
            for _ in range(body.u32()):
                name = body.name()
                kind = body.byte()
                index = body.u32()
                sig = None
                if kind == 0 and index < len(func_types):
                    sig = _type_at(types, func_types[index])
                info.exports[name] = Export(name, _KINDS.get(kind, "?"), index, sig)
    return info


def _read_functype(body: _Reader) -> Signature:
    form = body.byte()
    if form != 0x60:
        # GC proposals add other type forms; agents are plain functions.
        raise ModuleInvalid(f"unsupported WebAssembly type form 0x{form:02x}")
    params = tuple(body.valtype() for _ in range(body.u32()))
    results = tuple(body.valtype() for _ in range(body.u32()))
    return Signature(params, results)


def _type_at(types: Sequence[Signature], index: int) -> Signature:
    if index >= len(types):
        raise ModuleInvalid("malformed WebAssembly module (function type index out of range)")
    return types[index]


def _const_expr(body: _Reader) -> int | None:
    """Read a constant expression; return its value when it is a lone integer const."""
    value: int | None = None
    first = True
    while True:
        op = body.byte()
        if op == 0x0B:
            return value
        if op in (0x41, 0x42) and first:
            value = body.s64()
        elif op in (0x41, 0x42):
            body.s64()
            value = None
        elif op == 0x43:
            body.bytes(4)
            value = None
        elif op == 0x44:
            body.bytes(8)
            value = None
        elif op in (0x23, 0xD2):  # global.get, ref.func
            body.u32()
            value = None
        elif op == 0xD0:  # ref.null
            body.byte()
            value = None
        else:  # extended-const arithmetic and other ops: not a plain constant
            value = None
        first = False


# -------------------------------------------------------------------------
# The checks made before instantiation
# -------------------------------------------------------------------------


def declared_abi_version(info: ModuleInfo) -> int | None:
    """The ABI version the module declares (custom section or global), or None."""
    versions: list[int] = []
    for payload in info.custom_sections.get(ABI_SECTION, []):
        if not payload:
            raise AbiMismatch(
                f"the '{ABI_SECTION}' custom section is empty; it must hold "
                f"the ABI version as an unsigned LEB128 (\\01 for v1)"
            )
        versions.append(_Reader(payload).u32())
    export = info.exports.get(ABI_GLOBAL)
    if export is not None:
        constant = info.constant_globals.get(export.index) if export.kind == "global" else None
        if constant is None or constant[0] != "i32" or constant[1]:
            raise AbiMismatch(
                f"the export '{ABI_GLOBAL}' must be an immutable i32 global initialised "
                f"with i32.const (for example 1)"
            )
        versions.append(constant[2])
    if not versions:
        return None
    if len(set(versions)) > 1:
        found = ", ".join(str(v) for v in versions)
        raise AbiMismatch(f"the module declares conflicting agent ABI versions ({found})")
    return versions[0]


def check_module(
    info: ModuleInfo, *, extra_imports: Mapping[tuple[str, str], Signature] | None = None
) -> int | None:
    """Check ``info`` against ABI v1; return the declared version.

    Raises :class:`AbiMismatch` with a message naming the offending item. ``extra_imports``
    are the plugin host functions known at check time; when None, imports from modules
    other than ``caxton``, ``env`` and WASI are not checked (they are checked when the
    agent is instantiated with its host functions).
    """
    version = declared_abi_version(info)
    if version is not None and version not in SUPPORTED_ABI_VERSIONS:
        supported = ", ".join(f"v{v}" for v in sorted(SUPPORTED_ABI_VERSIONS))
        raise AbiMismatch(
            f"the module declares agent ABI v{version}, which this node does not support "
            f"(supported: {supported}); rebuild the agent against caxton.h ABI v{ABI_VERSION}"
        )
    for name, wanted in GUEST_EXPORTS.items():
        export = info.exports.get(name)
        if export is None:
            continue
        if export.kind != "func":
            raise AbiMismatch(f"the export '{name}' must be a function of type {wanted}")
        if export.signature != wanted:
            raise AbiMismatch(
                f"the export '{name}' has type {export.signature}, but ABI v{ABI_VERSION} "
                f"requires {wanted}"
            )
    if "handle_message" in info.exports:
        for needed in ("alloc", "memory"):
            if needed not in info.exports:
                raise AbiMismatch(
                    f"the module exports handle_message but not '{needed}'; ABI "
                    f"v{ABI_VERSION} passes messages through an exported memory and alloc"
                )
        if info.exports["memory"].kind != "memory":
            raise AbiMismatch("the export 'memory' must be the module's linear memory")
    check_imports(info, extra_imports)
    return version


def check_imports(
    info: ModuleInfo, extra_imports: Mapping[tuple[str, str], Signature] | None = None
) -> None:
    for imp in info.imports:
        key = (imp.module, imp.name)
        where = f"{imp.module}.{imp.name}"
        if imp.module in (HOST_MODULE, LEGACY_MODULE):
            wanted = HOST_IMPORTS.get(key)
            if wanted is None:
                raise AbiMismatch(
                    f"the module imports {where}, which agent ABI v{ABI_VERSION} does not "
                    f"define (see docs/agent-abi.md for the host functions)"
                )
            if imp.kind != "func" or imp.signature != wanted:
                got = imp.signature if imp.kind == "func" else imp.kind
                raise AbiMismatch(
                    f"the module imports {where} as {got}, but ABI v{ABI_VERSION} defines "
                    f"it as {wanted}"
                )
        elif imp.module == WASI_MODULE or extra_imports is None:
            continue
        elif key not in extra_imports:
            raise AbiMismatch(
                f"the module imports {where}, which no host function provides "
                f"(ABI v{ABI_VERSION} offers the 'caxton' and 'env' modules, WASI when "
                f"granted, and functions of installed plugins)"
            )
        elif imp.signature != extra_imports[key]:
            raise AbiMismatch(
                f"the module imports {where} as {imp.signature}, but the host function "
                f"has type {extra_imports[key]}"
            )


def wasi_imports(info: ModuleInfo) -> list[str]:
    return [imp.name for imp in info.imports if imp.module == WASI_MODULE]
