from __future__ import annotations

from pathlib import Path

import pytest

from caxton.drivers import DriverContext
from caxton.plugins import PluginHost


@pytest.fixture
def context(tmp_path: Path) -> DriverContext:
    """A driver context for node ``n1`` on an isolated plugin host."""
    host = PluginHost(use_entry_points=False)
    return DriverContext(node_id="n1", data_dir=tmp_path, hook=host.hook)
