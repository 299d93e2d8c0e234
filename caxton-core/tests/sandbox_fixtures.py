"""Fixtures for the sandbox tests: the example agents, built from source once per session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pluggy
import pytest

from caxton.drivers.base import DriverContext
from caxton.sandbox.wasmtime_sandbox import WasmtimeSandbox
from caxton.testing.sandbox import example_agents

__all__ = ["example_agents", "make_wasmtime_sandbox", "wasmtime_sandbox"]


def make_wasmtime_sandbox(data_dir: Path, **config: object) -> WasmtimeSandbox:
    context = DriverContext(
        node_id="test-node", data_dir=data_dir, hook=pluggy.PluginManager("caxton").hook
    )
    return WasmtimeSandbox(config, context)


@pytest.fixture
async def wasmtime_sandbox(tmp_path: Path) -> AsyncIterator[WasmtimeSandbox]:
    """A started wasmtime sandbox with its module cache in ``tmp_path``."""
    sandbox = make_wasmtime_sandbox(tmp_path)
    await sandbox.start()
    yield sandbox
    await sandbox.close()
