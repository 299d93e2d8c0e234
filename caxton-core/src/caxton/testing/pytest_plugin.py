"""pytest fixtures for Caxton plugin authors.

Registered through the ``pytest11`` entry point ``caxton`` of caxton-core, so the
fixtures are available in any test run where caxton-core is installed (switch off with
``-p no:caxton``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from caxton.testing.node import HookRecorder, NodeFactory


@pytest.fixture
def caxton_node_factory(tmp_path: Path) -> NodeFactory:
    """A :class:`~caxton.testing.NodeFactory` that skips entry points, with its data
    directories under the test's ``tmp_path``."""
    return NodeFactory(tmp_path / "caxton-nodes")


@pytest.fixture
def caxton_hook_recorder(caxton_node_factory: NodeFactory) -> Iterator[HookRecorder]:
    """A :class:`~caxton.testing.HookRecorder` attached to every node that
    ``caxton_node_factory`` builds during the test."""
    recorder = caxton_node_factory.record()
    yield recorder
    recorder.finish_recording()
