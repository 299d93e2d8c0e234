"""Placement: plugin filters, the strategy driver and plugin scores, in that order."""

from __future__ import annotations

from pathlib import Path

import pytest

from caxton import hookimpl
from caxton.drivers import DriverContext, NodeLoad, PlacementRequest
from caxton.placement import NoPlacement, rank_nodes
from caxton.placement.strategies import LeastLoaded
from caxton.plugins import PluginHost

NODES = [
    NodeLoad("a", agents=5),
    NodeLoad("b", agents=1),
    NodeLoad("c", agents=3, zone="z1"),
]


def make(tmp_path: Path, *plugins: object) -> tuple[PluginHost, LeastLoaded]:
    host = PluginHost(use_entry_points=False)
    for plugin in plugins:
        host.register(plugin)
    host.check_hooks()
    context = DriverContext(node_id="a", data_dir=tmp_path, hook=host.hook)
    return host, LeastLoaded({}, context)


def ids(nodes: list[NodeLoad]) -> list[str]:
    return [n.node_id for n in nodes]


def test_strategy_alone_ranks(tmp_path: Path) -> None:
    host, strategy = make(tmp_path)
    assert ids(rank_nodes(host.hook, strategy, PlacementRequest("x"), NODES)) == ["b", "c", "a"]


def test_filters_exclude_and_scores_rerank(tmp_path: Path) -> None:
    class NoB:
        @hookimpl
        def caxton_placement_filter(self, request, candidates):  # type: ignore[no-untyped-def]
            return ["b"]

    class PreferZone:
        @hookimpl
        def caxton_placement_score(self, request, candidate):  # type: ignore[no-untyped-def]
            return 10.0 if candidate.zone == request.requirements.get("zone") else None

    host, strategy = make(tmp_path, NoB(), PreferZone())
    request = PlacementRequest("x", requirements={"zone": "z1"})
    assert ids(rank_nodes(host.hook, strategy, request, NODES)) == ["c", "a"]
    # Without the zone requirement, scores abstain and the strategy's order stands.
    assert ids(rank_nodes(host.hook, strategy, PlacementRequest("x"), NODES)) == ["c", "a"]


def test_everything_filtered_is_a_clear_error(tmp_path: Path) -> None:
    class NoneFit:
        @hookimpl
        def caxton_placement_filter(self, request, candidates):  # type: ignore[no-untyped-def]
            return [c.node_id for c in candidates]

    host, strategy = make(tmp_path, NoneFit())
    with pytest.raises(NoPlacement, match="3 candidates, 3 excluded by plugins"):
        rank_nodes(host.hook, strategy, PlacementRequest("x"), NODES)


def test_missing_target_node_is_named(tmp_path: Path) -> None:
    host, strategy = make(tmp_path)
    with pytest.raises(NoPlacement, match="target node 'zz' is not available"):
        rank_nodes(host.hook, strategy, PlacementRequest("x", target_node="zz"), NODES)
