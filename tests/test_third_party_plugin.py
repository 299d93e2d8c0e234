"""A separately packaged third-party plugin is discovered, selected and called.

examples/caxton-zone-aware is installed into the test environment the way a user
installs a plugin (``nox -s integration`` does it, not editable), and Caxton sees it
only through its entry points.
"""

from __future__ import annotations

import importlib
import json
import logging
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, distribution, entry_points
from pathlib import Path
from typing import Any

import pytest
from support import EXAMPLE_PLUGIN_DIR, caxton_command, clean_environment, run_caxton

from caxton.drivers import ClusterView, NodeLoad, PartitionMode, PlacementRequest
from caxton.testing import NodeFactory

DIST = "caxton-zone-aware"
VERSION = "0.1.0"


@pytest.fixture(scope="module", autouse=True)
def zone_aware_installed() -> None:
    """The example must be installed like any package, which the integration session does;
    the tests do not install it themselves, so as not to change an environment they
    happen to run in."""
    try:
        installed = distribution(DIST)
    except PackageNotFoundError:
        pytest.fail(
            f"{DIST} is not installed: run `nox -s integration-3.11`, or "
            f"`pip install ./{EXAMPLE_PLUGIN_DIR.relative_to(EXAMPLE_PLUGIN_DIR.parents[1])}` "
            f"first",
            pytrace=False,
        )
    assert installed.version == VERSION


@pytest.fixture
def factory(tmp_path: Path) -> NodeFactory:
    """Nodes that discover plugins through installed entry points, like a real one."""
    return NodeFactory(tmp_path, use_entry_points=True)


def plugin_rows(*options: str) -> list[dict[str, Any]]:
    result = run_caxton("plugins", "--json", *options)
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def row(rows: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [r for r in rows if r["kind"] == kind and r["name"] == name]
    assert len(matches) == 1, f"{kind} {name} listed {len(matches)} times in {rows}"
    return matches[0]


# -------------------------------------------------------------------------
# Discovered
# -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("group", "name", "target"),
    [
        ("caxton.placement", "zone-aware", "caxton_zone_aware.placement:ZoneAware"),
        ("caxton.partition_policy", "zone-majority", "caxton_zone_aware.partition:ZoneMajority"),
        ("caxton.hooks", "zone-filter", "caxton_zone_aware.hooks"),
    ],
)
def test_entry_points_come_from_the_distribution(group: str, name: str, target: str) -> None:
    (ep,) = entry_points(group=group, name=name)
    assert ep.value == target
    assert ep.dist is not None
    assert (ep.dist.metadata["Name"], ep.dist.version) == (DIST, VERSION)


def test_installed_as_a_package_not_from_the_source_tree() -> None:
    module = importlib.import_module("caxton_zone_aware")
    assert module.__file__ is not None
    assert EXAMPLE_PLUGIN_DIR not in Path(module.__file__).resolve().parents


def test_caxton_plugins_lists_it() -> None:
    rows = plugin_rows()
    placement = row(rows, "placement", "zone-aware")
    assert (placement["distribution"], placement["version"]) == (DIST, VERSION)
    assert placement["selected"] is False
    assert placement["broken"] is None
    policy = row(rows, "partition_policy", "zone-majority")
    assert (policy["distribution"], policy["version"]) == (DIST, VERSION)
    hooks = row(rows, "hooks", "zone-filter")
    assert (hooks["distribution"], hooks["version"]) == (DIST, VERSION)
    assert hooks["hooks"] == ["caxton_node_started", "caxton_placement_filter"]
    assert hooks["selected"] is True


def test_caxton_plugins_table_names_the_distribution() -> None:
    result = run_caxton("plugins")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "zone-aware" in line]
    assert lines, result.stdout
    assert DIST in lines[0]
    assert VERSION in lines[0]


# -------------------------------------------------------------------------
# Selected
# -------------------------------------------------------------------------


def test_selected_with_plugin_option() -> None:
    rows = plugin_rows("--plugin", "placement=zone-aware")
    assert row(rows, "placement", "zone-aware")["selected"] is True
    assert row(rows, "placement", "least-loaded")["selected"] is False


def test_selected_from_config_file(tmp_path: Path) -> None:
    config = tmp_path / "caxton.toml"
    config.write_text(
        '[plugins]\nplacement = "zone-aware"\npartition_policy = "zone-majority"\n\n'
        '[partition.zone-majority]\nzones = { n1 = "a", n2 = "b" }\ntiebreaker = "a"\n'
    )
    rows = plugin_rows("--config", str(config))
    assert row(rows, "placement", "zone-aware")["selected"] is True
    assert row(rows, "partition_policy", "zone-majority")["selected"] is True
    validated = run_caxton("config", "validate", str(config))
    assert validated.returncode == 0, validated.stderr


def test_its_config_section_is_validated(tmp_path: Path) -> None:
    config = tmp_path / "caxton.toml"
    config.write_text(
        '[plugins]\npartition_policy = "zone-majority"\n\n'
        "[partition.zone-majority]\ntiebreaker = 3\n"
    )
    result = run_caxton("config", "validate", str(config))
    assert result.returncode != 0
    assert "tiebreaker" in result.stderr
    assert "Traceback" not in result.stderr


def test_blocked_hook_plugin() -> None:
    rows = plugin_rows("--plugin", "no:zone-filter")
    assert row(rows, "hooks", "zone-filter")["blocked"] is True


# -------------------------------------------------------------------------
# Called, on a real node
# -------------------------------------------------------------------------


async def test_a_node_runs_the_plugin(
    factory: NodeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="caxton_zone_aware")
    options = ["placement=zone-aware", "partition_policy=zone-majority"]
    config = {"node.zone": "eu-1a", "node.region": "eu"}
    async with factory.node("n1", plugin_options=options, config=config) as node:
        # Selected drivers were loaded through their entry points...
        assert node.host.selected["placement"] == "zone-aware"
        assert type(node.placement).__module__ == "caxton_zone_aware.placement"
        assert node.host.selected["partition_policy"] == "zone-majority"
        # ...the hook plugin was registered and called at start...
        assert "zone-aware: node n1 started in zone eu-1a (region eu)" in caplog.text
        # ...and each is called through the node's own machinery.
        candidates = [
            NodeLoad("n1", agents=9, region="eu", zone="eu-1a"),
            NodeLoad("n2", agents=0, region="us", zone="us-1a"),
            NodeLoad("n3", agents=4, region="eu", zone="eu-1b"),
        ]
        ranked = node.placement.rank(PlacementRequest("agent"), candidates)
        assert [c.node_id for c in ranked] == ["n1", "n3", "n2"]
        request = PlacementRequest("agent", requirements={"zones": "us-1a"})
        dropped = node.hook.caxton_placement_filter(request=request, candidates=candidates)
        assert ["n1", "n3"] in dropped
        view = ClusterView("n1", ("n1", "n2", "n3"), ("n1",))
        decision = node.hook.caxton_partition_decision(node=node, view=view)
        assert decision.mode is PartitionMode.READ_ONLY
        assert "zones reachable" in decision.reason


async def test_blocked_hook_plugin_is_not_called(
    factory: NodeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="caxton_zone_aware")
    async with factory.node("n1", plugin_options=["no:zone-filter"]) as node:
        assert node.host.pm.get_plugin("zone-filter") is None
    assert "zone-aware: node" not in caplog.text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``caxton server start`` with the plugin selected, in its own process."""
    api = f"127.0.0.1:{free_port()}"
    command = [
        caxton_command(), "server", "start", "--node-id", "cli-node",
        "--api-addr", api, "--metrics-addr", f"127.0.0.1:{free_port()}",
        "--bind-addr", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "data"),
        "--plugin", "placement=zone-aware", "--plugin", "partition_policy=zone-majority",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=clean_environment(),
    )  # fmt: skip
    try:
        yield process, api
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def test_server_start_uses_it(server: tuple[subprocess.Popen[str], str]) -> None:
    process, api = server
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, f"node exited: {process.communicate()[0]}"
        try:
            with urllib.request.urlopen(f"http://{api}/api/v1/health", timeout=2) as response:
                assert response.status == 200
                break
        except OSError:
            assert time.monotonic() < deadline, "node did not answer /api/v1/health"
            time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "zone-aware: node cli-node started" in output
    assert "placement=zone-aware" in output
    assert "partition_policy=zone-majority" in output
