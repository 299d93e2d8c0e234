# Fixtures shared by the test modules of this directory. Imported rather than listed in
# ``pytest_plugins``, which pytest refuses in a conftest below the rootdir.
from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from sandbox_fixtures import example_agents, wasmtime_sandbox

from caxton.node import Node

__all__ = ["example_agents", "http", "wasmtime_sandbox"]


@pytest.fixture
async def http(node: Node) -> AsyncIterator[aiohttp.ClientSession]:
    """A client of the REST API of the module's ``node`` fixture."""
    assert node.api_address is not None
    host, port = node.api_address
    async with aiohttp.ClientSession(f"http://{host}:{port}") as session:
        yield session
