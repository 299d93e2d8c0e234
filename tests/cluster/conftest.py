from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_support import ProcessCluster, echo_wasm


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., ProcessCluster]]:
    """``make_cluster(transport="tcp", ...)`` -> a :class:`ProcessCluster`, killed after
    the test."""
    clusters: list[ProcessCluster] = []

    def make(**options: Any) -> ProcessCluster:
        base = tmp_path / f"cluster{len(clusters)}"
        base.mkdir()
        cluster = ProcessCluster(base, **options)
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.close()


@pytest.fixture(scope="session")
def echo() -> bytes:
    return echo_wasm()
