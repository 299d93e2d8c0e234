"""The sandbox driver: compiles WebAssembly agents and runs them under limits.

The contract every sandbox honours (and :class:`caxton.testing.SandboxConformance`
checks) is the agent ABI of docs/agent-abi.md: the same exports, the same ``caxton``
and ``env`` host imports, the same limits and the same failure wording.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from caxton.drivers.base import Driver

MiB = 1024 * 1024


@dataclass(frozen=True)
class ResourceLimits:
    """Per-agent limits. Each must be > 0; the API and config validate that."""

    max_memory_bytes: int = 64 * MiB
    #: Fuel granted per delivery (message, timer, init); refilled each time.
    max_fuel: int = 10_000_000
    #: Wall-clock limit of one delivery.
    max_execution_time_ms: int = 5_000
    max_table_elements: int = 10_000
    max_instances: int = 10
    max_message_bytes: int = 1 * MiB


@dataclass(frozen=True)
class WasiCapabilities:
    """WASI preview 1 grants. Everything is off unless granted per agent."""

    enabled: bool = False
    #: Route the agent's stdout/stderr to the node log.
    stdio: bool = False
    #: guest path -> host directory, mounted read-only.
    preopen_dirs: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()


class AgentHostAPI(Protocol):
    """What a running agent may ask of its node: the body of the ABI's host imports.

    Implemented by core's agent runtime, one object per agent. Return codes follow the
    ABI: ``0`` success, negative values are the errors listed in docs/agent-abi.md.
    """

    def send(self, message: bytes) -> int: ...
    def reply(self, message: bytes) -> int: ...
    def legacy_send(self, recipient: str, content: bytes) -> int: ...
    def log(self, level: int, text: str) -> None: ...
    def now_us(self) -> int: ...
    def random_bytes(self, n: int) -> bytes: ...
    def kv_store(self, key: bytes, value: bytes) -> int: ...
    def kv_load(self, key: bytes) -> bytes | None: ...
    def kv_delete(self, key: bytes) -> int: ...
    def set_timer(self, delay_ms: int, repeat: bool) -> int: ...
    def cancel_timer(self, timer_id: int) -> int: ...


@dataclass(frozen=True)
class HostFunction:
    """An extra host import offered to agents by a plugin (``caxton_agent_host_functions``).

    ``params``/``results`` are wasm value types (``"i32"``, ``"i64"``, ``"f32"``,
    ``"f64"``). ``func`` is called with a :class:`HostCall` first, then the wasm
    arguments; it returns ``None``, a value, or a tuple of values.

    ``func`` runs on the node's event loop: when a heavy agent's call runs on a worker
    thread (caxton.agents.offload), the call waits while ``func`` is carried out on the
    loop. ``thread_safe=True`` lets it run on the worker instead (no hop to the loop):
    only for functions that touch nothing of the loop's.
    """

    module: str
    name: str
    params: tuple[str, ...]
    results: tuple[str, ...]
    func: Callable[..., Any]
    thread_safe: bool = False


class HostCall(Protocol):
    """Passed to a plugin's :class:`HostFunction`: the calling agent and its memory."""

    agent_name: str
    host: AgentHostAPI

    def read_memory(self, ptr: int, length: int) -> bytes: ...
    def write_memory(self, ptr: int, data: bytes) -> None: ...


class CompiledModule:
    """A validated, compiled module, ready to instantiate many times."""

    def __init__(self, sha256: str, abi_version: int | None, exports: frozenset[str]) -> None:
        self.sha256 = sha256
        #: ABI version the module declares, or None when it declares none (accepted as v1).
        self.abi_version = abi_version
        self.exports = exports

    @property
    def handles_messages(self) -> bool:
        return "handle_message" in self.exports


class AgentInstance(ABC):
    """One live instance of an agent. Calls are synchronous and bounded by the limits.

    Any failure inside the guest raises :class:`caxton.errors.ExecutionFailed` with a
    ``reason`` of ``"fuel"``, ``"timeout"``, ``"memory"``, ``"trap"`` or ``"abi"``;
    nothing the guest does may raise anything else or harm the process.
    """

    #: Fuel consumed by the last call.
    last_fuel_used: int = 0
    #: Total fuel consumed by this instance.
    total_fuel_used: int = 0

    @abstractmethod
    def init(self) -> None:
        """Run ``agent_init`` when exported."""

    @abstractmethod
    def handle_message(self, message: bytes) -> int:
        """Hand one encoded message to ``handle_message``; return its i32 status."""

    @abstractmethod
    def handle_timer(self, timer_id: int) -> None:
        """Call ``handle_timer(id)`` when exported."""

    @abstractmethod
    def shutdown(self) -> None:
        """Run ``agent_shutdown`` when exported."""

    @abstractmethod
    def close(self) -> None:
        """Free the instance. Safe to call twice."""

    @abstractmethod
    def memory_size(self) -> int:
        """Current linear memory size in bytes."""


class Sandbox(Driver):
    """Compiles modules and instantiates agents (entry-point group ``caxton.sandbox``)."""

    kind: ClassVar[str] = "sandbox"
    #: True when an instance's calls may run on a worker thread while the event loop
    #: goes on: the call releases the GIL while the guest runs, and host functions may
    #: then be called from that thread. The node runs heavy agents off the loop only
    #: with such a sandbox (caxton.agents.offload).
    calls_off_loop: ClassVar[bool] = False

    @abstractmethod
    def compile(self, wasm: bytes) -> CompiledModule:
        """Validate and compile ``wasm`` (cached by content).

        Raises :class:`caxton.errors.ModuleInvalid` for bytes that are not WebAssembly
        and :class:`caxton.errors.AbiMismatch` for an unsupported declared ABI version.
        """

    @abstractmethod
    def instantiate(
        self,
        module: CompiledModule,
        *,
        agent_name: str,
        limits: ResourceLimits,
        host: AgentHostAPI,
        capabilities: WasiCapabilities = WasiCapabilities(),
        extra_functions: Sequence[HostFunction] = (),
    ) -> AgentInstance:
        """Create a live instance of ``module`` bound to ``host`` under ``limits``."""
