from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cluster_support import ProcessCluster, build_release, cluster_maker, echo_wasm, run_caxton

from caxton import __version__


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


@pytest.fixture(scope="session")
def next_release(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], str]:
    """The ``caxton`` command of another release of this checkout (``<version>.post1``,
    :func:`cluster_support.build_release`), and its version; built once per session."""
    uv = shutil.which("uv")
    if uv is None:
        if os.environ.get("CI"):
            pytest.fail("uv is not on PATH: .ci/run installs it")
        pytest.skip("needs uv to build the second release's environment (pip install uv)")
    version = f"{__version__}.post1"
    return build_release(tmp_path_factory.mktemp("next-release"), version, uv), version
