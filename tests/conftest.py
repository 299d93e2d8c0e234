from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support import VirtualEnv


@pytest.fixture
def make_venv(tmp_path: Path) -> Any:
    """``make_venv(name)`` -> a new :class:`support.VirtualEnv` under the test's tmp_path."""

    def make(name: str = "venv") -> VirtualEnv:
        return VirtualEnv(tmp_path / name)

    return make
