"""Core's default sandbox driver, on wasmtime (entry point ``caxton.sandbox: wasmtime``).

This module imports cheaply; wasmtime's native library loads when the driver is
constructed. docs/sandbox.md describes the limits, the caches, the pool and the fast
message path; docs/agent-abi.md the contract agents are held to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from caxton.config import ConfigSection, Field
from caxton.drivers.base import DriverContext
from caxton.drivers.sandbox import (
    AgentHostAPI,
    AgentInstance,
    CompiledModule,
    HostFunction,
    MiB,
    ResourceLimits,
    Sandbox,
    WasiCapabilities,
)
from caxton.errors import ConfigError
from caxton.units import parse_duration, parse_size

if TYPE_CHECKING:
    from caxton.sandbox.wasmtime_runtime import WasmtimeRuntime

NO_WASI = WasiCapabilities()
#: Wasm runs on the caller's native stack (8 MiB for Python threads on Linux by default):
#: leave room for the host frames below it.
MAX_WASM_STACK = 4 * MiB

CONFIG_SECTION = ConfigSection(
    "sandbox.wasmtime",
    (
        Field(
            "agent_pool_size",
            "int",
            None,
            "Pre-warmed instances per module (default: runtime.agent_pool_size)",
            optional=True,
            minimum=0,
        ),
        Field(
            "module_cache",
            "bool",
            None,
            "Cache compiled modules on disk (default: runtime.module_cache)",
            optional=True,
        ),
        Field(
            "cache_dir",
            "str",
            None,
            "Compiled module cache (default: DATA_DIR/cache/wasmtime)",
            optional=True,
        ),
        Field(
            "epoch_tick",
            "duration",
            "10ms",
            "Epoch interruption tick; wall-time limits are enforced to this granularity",
            minimum=0.001,
        ),
        Field(
            "max_wasm_stack",
            "size",
            None,
            "Wasm stack per call (default: runtime.wasm_stack_limit)",
            optional=True,
            minimum=65536,
        ),
        Field(
            "memory_reservation",
            "size",
            None,
            "Address space reserved per linear memory; growth beyond it moves the memory "
            "(default: runtime.wasm_memory_limit, the most an agent may ask)",
            optional=True,
        ),
        Field("memory_guard_size", "size", "64KB", "Guard region after each linear memory"),
        Field(
            "memory_growth_reservation",
            "size",
            "64MB",
            "Room reserved past a memory's size when it moves, so growth does not copy it "
            "again at every page",
        ),
        Field("opt_level", "str", "speed", choices=("none", "speed", "speed_and_size")),
        Field("parallel_compilation", "bool", True),
    ),
    "The wasmtime sandbox driver",
)


class WasmtimeSandbox(Sandbox):
    """Runs agents on wasmtime with fuel, epoch deadlines and store limits."""

    config_section: ClassVar[ConfigSection | None] = CONFIG_SECTION
    #: ctypes releases the GIL during the guest's run; host callbacks take it back.
    calls_off_loop: ClassVar[bool] = True

    def __init__(self, config: Mapping[str, Any], context: DriverContext) -> None:
        super().__init__(config, context)
        from caxton.sandbox.wasmtime_runtime import EngineSettings, WasmtimeRuntime

        values = {**CONFIG_SECTION.defaults(), **self.config}
        runtime = context.node_config("runtime")
        pool_size = _first(values["agent_pool_size"], runtime.get("agent_pool_size"), 4)
        use_cache = _first(values["module_cache"], runtime.get("module_cache"), True)
        cache_dir: Path | None = None
        if use_cache:
            cache_dir = (
                Path(values["cache_dir"]).expanduser()
                if values["cache_dir"]
                else Path(context.data_dir) / "cache" / "wasmtime"
            )
        max_wasm_stack = parse_size(
            _first(values["max_wasm_stack"], runtime.get("wasm_stack_limit"), 1 * MiB)
        )
        if max_wasm_stack > MAX_WASM_STACK:
            raise ConfigError(
                f"sandbox.wasmtime.max_wasm_stack (or runtime.wasm_stack_limit) is "
                f"{max_wasm_stack} bytes; at most {MAX_WASM_STACK} is allowed because wasm "
                f"runs on the calling thread's native stack (8 MiB by default), which a "
                f"deeper wasm stack would overflow and crash the node"
            )
        settings = EngineSettings(
            epoch_tick_s=parse_duration(values["epoch_tick"]),
            max_wasm_stack=max_wasm_stack,
            memory_reservation=parse_size(
                _first(values["memory_reservation"], runtime.get("wasm_memory_limit"), 512 * MiB)
            ),
            memory_guard_size=parse_size(values["memory_guard_size"]),
            memory_reservation_for_growth=parse_size(values["memory_growth_reservation"]),
            opt_level=str(values["opt_level"]),
            parallel_compilation=bool(values["parallel_compilation"]),
        )
        self.runtime: WasmtimeRuntime = WasmtimeRuntime(
            settings,
            cache_dir=cache_dir,
            pool_size=int(pool_size),
            default_fuel=int(runtime.get("default_max_fuel", 10_000_000)),
        )

    async def start(self) -> None:
        self.runtime.start()

    async def close(self) -> None:
        self.runtime.close()

    def pooled(self, module: CompiledModule) -> int:
        """Pre-warmed instances of ``module`` ready to serve (benchmarks, diagnostics)."""
        return self.runtime.pooled(module.sha256)

    def compile(self, wasm: bytes) -> CompiledModule:
        return self.runtime.compile(wasm)

    def instantiate(
        self,
        module: CompiledModule,
        *,
        agent_name: str,
        limits: ResourceLimits,
        host: AgentHostAPI,
        capabilities: WasiCapabilities = NO_WASI,
        extra_functions: Sequence[HostFunction] = (),
    ) -> AgentInstance:
        # Without the epoch ticker wall-time limits would not fire: start it on first use.
        self.runtime.start()
        from caxton.sandbox.wasmtime_runtime import WasmtimeModule

        if not isinstance(module, WasmtimeModule):
            from caxton.errors import SandboxError

            raise SandboxError(
                f"module {module.sha256[:12]} was compiled by another sandbox; compile it "
                f"with this one"
            )
        return self.runtime.instantiate(
            module,
            agent_name=agent_name,
            limits=limits,
            host=host,
            capabilities=capabilities,
            extra_functions=extra_functions,
        )


def _first(*values: Any) -> Any:
    return next(v for v in values if v is not None)
