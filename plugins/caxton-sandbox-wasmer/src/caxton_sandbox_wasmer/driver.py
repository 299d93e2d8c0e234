"""The wasmer sandbox driver (entry point ``caxton.sandbox: wasmer``).

This module imports cheaply and never imports wasmer at import time: wasmer 1.1 has
binary wheels only for CPython 3.10 and older, and on newer interpreters PyPI's
``wasmer`` is a stub that raises ImportError. Constructing the driver there raises one
:class:`caxton.errors.PluginError` naming the interpreter to use. docs/sandbox-wasmer.md
describes the design.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
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
    ResourceLimits,
    Sandbox,
    WasiCapabilities,
)
from caxton.errors import PluginError
from caxton.units import parse_size

if TYPE_CHECKING:
    from caxton_sandbox_wasmer.runtime import WasmerModule, WasmerRuntime

NO_WASI = WasiCapabilities()
#: The newest CPython wasmer 1.1.0 publishes wheels for.
NEWEST_PYTHON = (3, 10)

CONFIG_SECTION = ConfigSection(
    "sandbox.wasmer",
    (
        Field(
            "agent_pool_size",
            "int",
            None,
            "Pre-warmed instances per module on the node's event-loop thread "
            "(default: runtime.agent_pool_size)",
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
            "Compiled module cache (default: DATA_DIR/cache/wasmer)",
            optional=True,
        ),
        Field(
            "fuel_slice",
            "int",
            1_000_000,
            "Fuel handed to an agent at a time; the wall-clock deadline is checked between slices",
            minimum=1000,
        ),
        Field(
            "memory_ceiling",
            "size",
            None,
            "Most memory any agent may declare (default: runtime.wasm_memory_limit)",
            optional=True,
        ),
    ),
    "The wasmer sandbox driver (CPython 3.10 or older)",
)


def wasmer_unavailable() -> str | None:
    """Why wasmer cannot be used on this interpreter, or None when it can."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if sys.version_info[:2] > NEWEST_PYTHON:
        return (
            f"sandbox driver 'wasmer' needs CPython 3.10 or older (wasmer 1.1.0 has no "
            f"wheels for Python {version}); run the node with python3.10"
        )
    try:
        import wasmer  # noqa: F401
        import wasmer_compiler_cranelift  # noqa: F401
    except ImportError as exc:
        return (
            f"sandbox driver 'wasmer' cannot load wasmer on Python {version} ({exc}); "
            f"install it with: pip install 'caxton-sandbox-wasmer' (wasmer==1.1.0 and "
            f"wasmer-compiler-cranelift==1.1.0)"
        )
    return None


class WasmerSandbox(Sandbox):
    """Runs agents on wasmer with metering and limits compiled into each module."""

    config_section: ClassVar[ConfigSection | None] = CONFIG_SECTION

    def __init__(self, config: Mapping[str, Any], context: DriverContext) -> None:
        super().__init__(config, context)
        problem = wasmer_unavailable()
        if problem is not None:
            raise PluginError(problem)
        from caxton_sandbox_wasmer.runtime import WasmerRuntime, WasmerSettings

        values = {**CONFIG_SECTION.defaults(), **self.config}
        runtime = context.node_config("runtime")
        pool_size = _first(values["agent_pool_size"], runtime.get("agent_pool_size"), 4)
        use_cache = _first(values["module_cache"], runtime.get("module_cache"), True)
        cache_dir: Path | None = None
        if use_cache:
            cache_dir = (
                Path(values["cache_dir"]).expanduser()
                if values["cache_dir"]
                else Path(context.data_dir) / "cache" / "wasmer"
            )
        settings = WasmerSettings(
            fuel_slice=int(values["fuel_slice"]),
            memory_ceiling=parse_size(
                _first(values["memory_ceiling"], runtime.get("wasm_memory_limit"), "512MB")
            ),
        )
        self.runtime: WasmerRuntime = WasmerRuntime(
            settings, cache_dir=cache_dir, pool_size=int(pool_size)
        )
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        # Pre-warmed instances are bound to the thread that makes them: make them on the
        # event loop's thread, which is where the agent manager instantiates.
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        self._loop = None

    def pooled(self, module: CompiledModule) -> int:
        """Pre-warmed instances of ``module`` ready for the calling thread."""
        return self.runtime.pooled(module.sha256)

    def compile(self, wasm: bytes) -> CompiledModule:
        module = self.runtime.compile(wasm)
        self._request_fill(module)
        return module

    def _request_fill(self, module: WasmerModule) -> None:
        loop = self._loop
        if loop is None or self.runtime.pool_size <= 0 or loop.is_closed():
            return

        def fill() -> None:
            try:
                self.runtime.fill_pool(module)
            except Exception:
                self.context.logger.exception(
                    "pre-warming wasmer instances of module %s failed", module.sha256[:12]
                )

        with contextlib.suppress(RuntimeError):  # the loop is closing
            loop.call_soon_threadsafe(fill)

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
        from caxton_sandbox_wasmer.runtime import WasmerModule

        if not isinstance(module, WasmerModule):
            from caxton.errors import SandboxError

            raise SandboxError(
                f"module {module.sha256[:12]} was compiled by another sandbox; compile it "
                f"with this one"
            )
        instance = self.runtime.instantiate(
            module,
            agent_name=agent_name,
            limits=limits,
            host=host,
            capabilities=capabilities,
            extra_functions=extra_functions,
        )
        if self.runtime.stats["pool_hit"] and self.runtime.pooled(module.sha256) <= (
            self.runtime.pool_size // 2
        ):
            self._request_fill(module)
        return instance


def _first(*values: Any) -> Any:
    return next(v for v in values if v is not None)
