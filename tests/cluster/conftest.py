from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cluster_support import ProcessCluster, cluster_maker, echo_wasm, run_caxton


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., ProcessCluster]]:
    """``make_cluster(transport="tcp", ...)`` -> a :class:`ProcessCluster`, killed after
    the test."""
    with cluster_maker(tmp_path) as make:
        yield make


@pytest.fixture(scope="session")
def echo() -> bytes:
    return echo_wasm()


@pytest.fixture
def cluster_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory for ``caxton cluster up``; its nodes are stopped after the test."""
    directory = tmp_path / "cluster"
    yield directory
    if (directory / "cluster.json").exists():  # a failed test must not leave nodes running
        run_caxton("cluster", "down", "--data-dir", str(directory), "--timeout", "5")
