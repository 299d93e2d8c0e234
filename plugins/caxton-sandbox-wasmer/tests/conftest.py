"""Fixtures of the wasmer sandbox tests. On interpreters wasmer 1.1 has no wheels for,
only the tests of the "needs CPython 3.10" error run; the rest skip with that reason."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pluggy
import pytest

from caxton.drivers.base import DriverContext
from caxton.testing.sandbox import example_agents
from caxton_sandbox_wasmer.driver import WasmerSandbox, wasmer_unavailable

__all__ = ["example_agents", "make_wasmer_sandbox", "needs_wasmer", "wasmer_sandbox"]

WASMER_PROBLEM = wasmer_unavailable()
needs_wasmer = pytest.mark.skipif(
    WASMER_PROBLEM is not None,
    reason=f"wasmer needs CPython <= 3.10: {WASMER_PROBLEM}",
)


def make_wasmer_sandbox(data_dir: Path, **config: Any) -> WasmerSandbox:
    context = DriverContext(
        node_id="test-node", data_dir=data_dir, hook=pluggy.PluginManager("caxton").hook
    )
    return WasmerSandbox(config, context)


@pytest.fixture
async def wasmer_sandbox(tmp_path: Path) -> AsyncIterator[WasmerSandbox]:
    """A started wasmer sandbox with its module cache in ``tmp_path``."""
    sandbox = make_wasmer_sandbox(tmp_path)
    await sandbox.start()
    yield sandbox
    await sandbox.close()
